"""Process liveness from the process table: who holds a study run.

A run marked `running` in the store names its owner by a token `host:pid:start-time`
(`process_token`); `token_alive` tells whether that process still exists, reading the process
table (`/proc/PID/stat` on Linux) so that a reused pid or a zombie counts as gone. The store
uses it to hand the runs of a dead process back (`Store.reclaim_stale`), `study status` to
report them, and the Ray driver to clear the marker files of a killed driver.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional


def _stat_fields(pid: int) -> Optional[list[str]]:
    """The fields of `/proc/PID/stat` after the command name (field 3 on), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def _start_time(pid: int) -> Optional[str]:
    """Start time of process `pid` in clock ticks since boot (Linux), to detect pid reuse."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def process_token(pid: Optional[int] = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def token_alive(token: Optional[str]) -> bool:
    """Is the process named by `token` still running? Tokens from another host count as dead:
    a study folder is run from one machine at a time."""
    if not token:
        return False
    try:
        host, pid_s, start = token.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if token == process_token() and pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    if start != "?" and now is not None and now != start:
        return False  # the pid was reused by another process
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[:1] != ["Z"]
