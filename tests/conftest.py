"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No hub access, a private xmodal cache, and torch's thread count restored afterwards
    (configs with run.threads change it for the process)."""
    import torch
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "xcache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
