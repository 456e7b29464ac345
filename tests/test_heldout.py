"""A held-out dataset nobody tuned on, given as a user's npz, learns clearly better than chance.

JapaneseVowels (UEA, 12 channels, 9 speakers, variable length padded to 29) ships inside aeon
but is not a bundled xmodal task; no default or setting was chosen by looking at it.
"""

import json
import os
import subprocess
import sys

import numpy as np


def _japanese_vowels_npz(path):
    from aeon.datasets import load_classification

    def pad(xs, length):
        out = np.zeros((len(xs), xs[0].shape[0], length), np.float32)
        for i, x in enumerate(xs):
            out[i, :, :x.shape[1]] = x
        return out

    xtr, ytr = load_classification("JapaneseVowels", split="train")
    xte, yte = load_classification("JapaneseVowels", split="test")
    length = max(x.shape[1] for x in list(xtr) + list(xte))
    ytr, yte = ytr.astype(int) - 1, yte.astype(int) - 1
    np.savez(path, x_train=pad(xtr, length), y_train=ytr, x_test=pad(xte, length), y_test=yte)
    return yte


def test_heldout_npz_learns_better_than_chance(tmp_path):
    y_test = _japanese_vowels_npz(tmp_path / "jv.npz")
    majority_error = 1 - np.bincount(y_test).max() / len(y_test)   # 0.76: best constant guess
    cmd = [sys.executable, "-m", "xmodal.cli", "fit", "--task", f"npz:{tmp_path / 'jv.npz'}",
           "--epochs", "3", "--set", "body.num_layers=2", "--out", str(tmp_path / "runs"),
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done"
    assert summary["test_metric"] < 0.6 * majority_error, summary
