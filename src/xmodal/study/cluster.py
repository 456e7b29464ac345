"""The Ray backend of the study runner: `xmodal study run ... --ray ADDRESS`.

This module owns `RayPool`, a drop-in for `execute.WorkerPool` (submit / wait / terminate / close)
that runs each study run (`execute.execute`) as a Ray task on a cluster, and everything that
follows from runs leaving the driver's machine:

- connecting (`ray.init`): `auto` (the cluster this machine belongs to), `host:port` or
  `ray://host:port` (a given cluster), `local` (start a private single-machine instance);
  a process already connected to Ray keeps that connection;
- resources per run (`num_cpus`, `num_gpus`, fractional GPUs allowed) and the default number
  of runs in flight (the sum over nodes of the runs each node fits);
- the shared-folder check: run folders, logs and the alignment cache are written by the worker
  into the study folder at the driver's absolute path, so every node must see that folder at
  that path. A marker file the driver writes is looked for on every node before the study
  starts, and again by every run before it trains (nodes can join later);
- failure mapping: a task whose worker or node dies (OOM killer, lost machine, cancelled) comes
  back as a failed result, like a dead process in `WorkerPool`; Ray's own retries are off, so a run is
  never executed twice behind the driver's back.

What it does not change: only the driver writes to the SQLite store, and the driver alone
decides which runs are in flight, so two runs that would train the same alignment never run at
once (see `runner._run_plan`), whichever nodes they land on. Ray is imported lazily: without
the `cluster` extra nothing here is imported.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import UserError, one_line
from .execute import ERROR_LIMIT

INSTALL_HINT = "pip install 'xmodal[cluster]'"
PROBE_TIMEOUT = 120.0   # seconds each node gets to answer the shared-folder check
MARKER_PREFIX = ".ray-driver-"


# Ray binds a single-node instance to the loopback address only in its Windows/macOS mode,
# which this variable (read when `ray` is imported) selects; elsewhere it binds every interface.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def import_ray(local: bool = False):
    """The `ray` module, or a UserError naming the fix. `local`: a private instance will be
    started, so keep it on 127.0.0.1 (unless the user set LOOPBACK_ENV or imported Ray first;
    `RayPool.describe` says where it listens)."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError as exc:
        raise UserError(f"--ray needs Ray, which is not installed ({exc}); install it with: "
                        f"{INSTALL_HINT}") from None
    return ray


def failed_result(error: str) -> dict:
    return {"status": "failed", "summary": {}, "history": [], "seconds": 0.0, "error": error}


# ----------------------------------------------------------------------------- on the workers

def run_on_worker(job: dict, threads: int, gpus: float, marker: Optional[str]) -> dict:
    """One study run inside a Ray worker: check the study folder is the driver's, set threads
    and GPU visibility, then `execute.execute` (which never raises for a failed run)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as the CLI does (cli.main)
    if not gpus:
        # Ray leaves CUDA_VISIBLE_DEVICES alone for tasks without GPUs; hide them so that
        # run.device=auto does not take a GPU that Ray gave to another task.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    host = socket.gethostname()
    try:
        import ray
        if ray.is_initialized():   # (get_runtime_context would start Ray outside a worker)
            host += f" (Ray node {ray.get_runtime_context().get_node_id()[:8]})"
    except Exception:  # noqa: BLE001 - no Ray here (a direct call)
        pass
    if marker and not os.path.exists(marker):
        return failed_result(
            f"Ray node {host} does not see the study folder {Path(marker).parent} (the driver's "
            f"marker file is missing): mount the shared folder at the same path on every node")
    from .execute import execute
    import torch
    torch.set_num_threads(threads)
    try:
        Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
        with open(job["log"], "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} ray: host {host}, pid {os.getpid()}, "
                     f"{threads} thread(s), CUDA_VISIBLE_DEVICES="
                     f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}\n")
    except OSError:
        pass  # execute reports an unwritable folder
    result = execute(job)
    if not gpus and "CUDA" in (result.get("error") or ""):
        result["error"] += " (with --ray, CUDA runs need --ray-gpus, e.g. --ray-gpus 1)"
    return result


def probe_node(marker: str) -> dict:
    """Runs on one node: can it see the driver's marker file (and import xmodal)?"""
    import xmodal
    return {"host": socket.gethostname(), "sees_folder": os.path.exists(marker),
            "xmodal": getattr(xmodal, "__version__", "?")}


# ----------------------------------------------------------------------------- on the driver

def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a wrong HOST:PORT: Ray itself retries an unreachable head for minutes."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray '{address}' is not an address: give auto, local, HOST:PORT "
                        f"(the head node's GCS port, 6379 by default) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"could not reach the Ray head at {host}:{port} ({exc}); is "
                        f"`ray start --head` running there, and is the port open?") from None


class RayPool:
    """Runs on a Ray cluster, with `execute.WorkerPool`'s interface. `address`: auto, host:port,
    ray://host:port or local. `cpus` / `gpus`: Ray resources per run (gpus may be fractional,
    e.g. 0.5 puts two runs on one GPU); each run uses floor(cpus) (at least 1) torch threads."""

    def __init__(self, address: str, cpus: float = 1.0, gpus: float = 0.0,
                 quiet: bool = False, fn=None):
        if not address or not isinstance(address, str):
            raise UserError("--ray needs an address: auto, HOST:PORT, ray://HOST:PORT or local")
        if cpus is None or not cpus > 0:
            raise UserError(f"--ray-cpus must be > 0, got {cpus}")
        if gpus is None or gpus < 0:
            raise UserError(f"--ray-gpus must be >= 0, got {gpus}")
        if gpus > 1 and gpus != int(gpus):
            raise UserError(f"--ray-gpus above 1 must be a whole number, got {gpus}")
        self.ray = import_ray(local=address == "local")
        self.address, self.cpus, self.gpus = address, float(cpus), float(gpus)
        self.threads = max(1, int(self.cpus))
        self.progress = False
        self.refs: dict = {}            # ObjectRef -> run id
        self.logs: dict = {}            # run id -> its log file (to note a dead worker there)
        self.marker: Optional[Path] = None
        self.owned = False              # did we call ray.init (and so must call shutdown)?
        self.closed = False
        self.fn = fn                    # tests: a stand-in for run_on_worker
        self._connect(quiet)
        self.remote = self.ray.remote(self.fn or run_on_worker).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0, retry_exceptions=False)

    # -- connection and resources

    def _connect(self, quiet: bool) -> None:
        ray = self.ray
        if ray.is_initialized():
            return   # the caller connected (e.g. a notebook or a test): use that connection
        kwargs = {"include_dashboard": False, "log_to_driver": False,
                  "logging_level": logging.WARNING if quiet else logging.INFO}
        if self.address == "local":
            from .execute import available_cores
            kwargs["num_cpus"] = available_cores()
        elif self.address != "auto":
            _check_reachable(self.address)
        try:
            ray.init(address=self.address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError (no ray[client]), ...
            hint = ("no running cluster found: start one with `ray start --head`, or use "
                    "--ray local" if self.address == "auto" else
                    "check the address (HOST:6379 of the head node, or ray://HOST:10001); if the "
                    "cluster uses Ray's token authentication, set RAY_AUTH_MODE=token and give "
                    "this machine the cluster's token (~/.ray/auth_token)")
            raise UserError(f"could not connect to Ray at '{self.address}': "
                            f"{one_line(exc, ERROR_LIMIT)}; {hint}") from None
        self.owned = True

    def listening_on(self) -> set:
        """The addresses the instance's services bind: GCS and every node manager."""
        hosts = {self.ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]}
        return hosts | {n.get("NodeManagerAddress") for n in self._nodes()}

    def _nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive", n.get("alive"))]

    def slots(self) -> int:
        """How many runs the cluster holds at once: per node min(CPU // cpus, GPU // gpus),
        summed. A UserError when no node can hold even one run (it would wait forever)."""
        total = 0
        for node in self._nodes():
            res = node.get("Resources", {}) or {}
            n = int(res.get("CPU", 0) // self.cpus)
            if self.gpus:
                n = min(n, int(res.get("GPU", 0) // self.gpus))
            total += n
        if total < 1:
            res = self.ray.cluster_resources()
            raise UserError(
                f"no node of the Ray cluster has {self.cpus:g} CPU(s)"
                + (f" and {self.gpus:g} GPU(s)" if self.gpus else "")
                + f" for one run (cluster: {res.get('CPU', 0):g} CPUs, "
                  f"{res.get('GPU', 0):g} GPUs); lower --ray-cpus / --ray-gpus, or give "
                  f"--workers N to wait for nodes an autoscaler adds")
        return total

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        where = f"Ray at {self.address}"
        if self.address == "local":
            hosts = self.listening_on()
            where = ("a local Ray instance (loopback only)" if hosts <= LOOPBACK else
                     f"a local Ray instance listening on {', '.join(sorted(hosts))}, not only "
                     f"on loopback (set {LOOPBACK_ENV}=0 before Ray is imported to keep it on "
                     "this machine)")
        return (f"{where}: {len(self._nodes())} node(s), {res.get('CPU', 0):g} CPUs, "
                f"{res.get('GPU', 0):g} GPUs; {self.cpus:g} CPU(s)"
                + (f" and {self.gpus:g} GPU(s)" if self.gpus else "") + " per run")

    # -- the shared folder

    def check_folder(self, out: Path) -> list[str]:
        """Write a marker into the study folder and ask every node whether it sees it. Raises
        a UserError naming the nodes that do not; returns warnings (nodes that did not answer)."""
        import xmodal
        from .liveness import process_token, token_alive
        out = Path(out)
        for old in out.glob(f"{MARKER_PREFIX}*"):   # left by a driver that was killed here
            try:
                token = old.read_text().strip()
                if token.startswith(f"{socket.gethostname()}:") and not token_alive(token):
                    old.unlink()
            except OSError:
                pass
        self.marker = out / f"{MARKER_PREFIX}{secrets.token_hex(8)}"
        self.marker.write_text(process_token() + "\n")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        probe = self.ray.remote(probe_node)
        refs = {}
        for node in self._nodes():
            node_id = node.get("NodeID")
            where = (f"node {node.get('NodeManagerHostname', '?')} "
                     f"({node.get('NodeManagerAddress', '?')}, id {str(node_id)[:8]})")
            refs[probe.options(num_cpus=0, max_retries=0, scheduling_strategy=(
                NodeAffinitySchedulingStrategy(node_id, soft=False))).remote(
                str(self.marker))] = where
        ready, pending = self.ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT)
        bad, warnings = [], []
        for ref in ready:
            try:
                answer = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - e.g. xmodal not importable there
                bad.append(f"{refs[ref]} ({one_line(exc, ERROR_LIMIT)})")
                continue
            if not answer["sees_folder"]:
                bad.append(f"{refs[ref]} does not see {out}")
            elif answer["xmodal"] != xmodal.__version__:
                bad.append(f"{refs[ref]} has xmodal {answer['xmodal']}, this machine "
                           f"{xmodal.__version__}")
        for ref in pending:
            self.ray.cancel(ref, force=True)
            warnings.append(f"Ray {refs[ref]} did not answer the shared-folder check "
                            f"within {PROBE_TIMEOUT:.0f}s; runs there check it themselves")
        if bad:
            raise UserError("with --ray the study folder must be on a file system every node "
                            "mounts at the same path, and every node needs the same xmodal: "
                            + "; ".join(bad))
        return warnings

    # -- the WorkerPool interface

    def submit(self, run_id: str, job: dict) -> None:
        job = {**job, "progress": False}
        if self.fn is not None:
            ref = self.remote.remote(job)
        else:
            ref = self.remote.remote(job, self.threads, self.gpus,
                                     str(self.marker) if self.marker else None)
        self.refs[ref] = run_id
        self.logs[run_id] = job.get("log")

    def wait(self):
        """Yield (run_id, result) for the runs that finished (at least one)."""
        ray = self.ray
        refs = list(self.refs)
        ready: list = []
        while not ready:   # short timeouts keep Ctrl-C / SIGTERM responsive
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in dict.fromkeys(ready + more):
            run_id = self.refs.pop(ref)
            try:
                result = ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:   # raised past execute's guard
                cause = getattr(exc, "cause", None)
                cause = exc if cause is None else cause
                result = failed_result(f"the run's Ray task raised {one_line(cause, ERROR_LIMIT)}")
                self._note(run_id, f"driver: {result['error']}")
            except Exception as exc:  # noqa: BLE001 - worker/node died, task cancelled, ...
                result = failed_result(
                    f"the Ray worker or node running this run died while it was in flight "
                    f"({one_line(exc, ERROR_LIMIT)})")
                self._note(run_id, f"driver: {result['error']}")
            self.logs.pop(run_id, None)
            yield run_id, result

    def _note(self, run_id: str, msg: str) -> None:
        log = self.logs.get(run_id)
        if not log:
            return
        try:
            with open(log, "a") as fh:
                fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        except OSError:
            pass

    def terminate(self) -> None:
        for ref in list(self.refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        self.refs.clear()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()   # `local`: stops the instance; otherwise disconnects
