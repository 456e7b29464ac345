"""Stage 3 (refine): the fine-tuning loop, from the `train` section and a few plain values.

Correct where the reference code was not: the schedule never goes below zero, the scheduler
steps once per optimizer step, the loss is divided by the accumulation count, gradients are
clipped once on the accumulated gradient, model selection uses the validation split, and the
metric is computed over the whole evaluation set (`optim`, `evaluate`). Training state is snapshotted after an
epoch when `run.resume_interval` seconds have passed since the last snapshot (tensors and plain
data only, read back with `weights_only=True`), and a resumed run continues bit-for-bit on CPU.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.types import TaskData
from ..errors import START_OVER, Stopped, TrainingDiverged, UserError, one_line
from ..io.artifacts import atomic_torch_save
from ..model.crossmodal import checkpoint_state, load_checkpoint_state
from .device import autocast
from .evaluate import evaluate
from .frozen import CACHE_LIMIT_BYTES, OnFeatures, body_outputs, feature_bytes, front_is_frozen
from .metrics import make_loss
from .optim import make_optimizer, make_scheduler, resolve_budget

TIMED_STEPS = 20   # optimizer steps timed per run (on CUDA each of them waits for the device)


def read_resume(path: Path) -> Optional[dict]:
    """The snapshot in `path` (None when absent), read with `weights_only=True`: tensors and
    plain data only, so a crafted file cannot run code. An unreadable one is a `UserError`."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"run folder file {path} cannot be resumed from ({one_line(exc)}); "
                        f"{START_OVER}") from None


@dataclass
class TrainState:
    epoch: int = 0                      # epochs completed
    best_metric: float = float("inf")
    best_epoch: int = -1
    best_state: Optional[dict] = None
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are loaded (`run.num_workers`, `run.pin_memory`)."""
    num_workers: int = 0
    pin_memory: bool = False


class Trainer:
    """Fine-tunes `model` on `data`; `run()` returns the final `TrainState`."""

    def __init__(self, model: torch.nn.Module, data: TaskData, train: TrainConfig,
                 device: torch.device, *, seed: int = 0, precision: str = "fp32",
                 loader: LoaderOptions = LoaderOptions(), resume_interval: float = 60.0,
                 resume_path: Optional[Path] = None, on_epoch: Optional[Callable] = None,
                 progress: bool = True, stop=None):
        self.model, self.data, self.tc, self.device = model.to(device), data, train, device
        self.seed, self.precision, self.loader_opts = seed, precision, loader
        self.resume_interval = resume_interval
        self.resume_path, self.on_epoch, self.progress = resume_path, on_epoch, progress
        self.stop = stop    # a threading.Event: set, the run snapshots after this epoch and stops
        tc = train
        self.loss_fn = make_loss(data.spec.kind, tc.pos_weight)
        self.budget = resolve_budget(tc, len(data.x_train))
        self.epochs = self.budget.epochs
        self.n_batches = math.ceil(len(data.x_train) / self.budget.batch_size)
        self.steps_per_epoch = self.budget.steps_per_epoch
        total = int(round((tc.decay_epochs or self.epochs) * self.steps_per_epoch))
        self.opt = make_optimizer(model, tc, tc.lr)
        self.sched = make_scheduler(self.opt, total, int(round(tc.warmup_epochs * self.steps_per_epoch)),
                                    tc.schedule)
        self.state = TrainState()
        self._last_save = time.monotonic()
        self._last_lr = tc.lr
        self._decode = self._make_decoder() if data.spec.kind == "dense" else None
        self.net, self.x_train, self.x_val = self._inputs()
        self.cached = self.net is not self.model
        self.step_times: list[float] = []   # seconds of the first TIMED_STEPS optimizer steps

    def _inputs(self) -> tuple:
        """(the module that trains, train inputs, validation inputs): the predictor on cached
        body outputs when the front is frozen (`stages.frozen`), else the model on raw inputs."""
        d, args = self.data, (self.device, self.precision)
        if not (self.tc.cache_frozen and front_is_frozen(self.model) and d.augment is None
                and len(d.x_train)):
            return self.model, d.x_train, d.x_val
        n = len(d.x_train) + len(d.x_val)
        if feature_bytes(self.model, n, *args, d.x_train) > CACHE_LIMIT_BYTES:
            return self.model, d.x_train, d.x_val
        bs = self.tc.eval_batch_size
        x_train, grid = body_outputs(self.model, d.x_train, bs, *args)
        x_val = (body_outputs(self.model, d.x_val, bs, *args)[0] if len(d.x_val)
                 else np.empty((0, *x_train.shape[1:]), np.float32))
        return OnFeatures(self.model.predictor, grid), x_train, x_val

    def _make_decoder(self):
        if self.data.y_mean is None:
            return None
        mean = torch.as_tensor(self.data.y_mean, device=self.device)
        std = torch.as_tensor(self.data.y_std, device=self.device)
        return lambda t: t * std + mean

    # ------------------------------------------------------------------ resume
    def load_resume(self, blob: Optional[dict] = None) -> bool:
        """Continue from `blob` (default: `read_resume(resume_path)`); False when there is no
        snapshot. A snapshot that does not fit this run is a `UserError`."""
        if blob is None and self.resume_path is not None:
            blob = read_resume(self.resume_path)
        if blob is None:
            return False
        try:
            load_checkpoint_state(self.model, blob["model"])
            self.opt.load_state_dict(blob["optimizer"])
            self.sched.load_state_dict(blob["scheduler"])
            self.state = TrainState(**blob["state"])
        except Exception as exc:
                raise UserError(f"run folder file {self.resume_path} cannot be resumed from "
                            f"({one_line(exc)}); {START_OVER}") from None
        return True

    def _resume_due(self) -> bool:
        return time.monotonic() - self._last_save >= self.resume_interval

    def _save_resume(self) -> None:
        if self.resume_path is None:
            return
        self._last_save = time.monotonic()
        state = {f.name: getattr(self.state, f.name) for f in fields(TrainState)}
        atomic_torch_save({"model": checkpoint_state(self.model), "optimizer": self.opt.state_dict(),
                           "scheduler": self.sched.state_dict(), "state": state},
                          self.resume_path)

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainState:
        tc = self.tc
        metric = self.data.spec.metric
        bar = tqdm(total=self.epochs, initial=self.state.epoch, desc="fine-tuning", unit="epoch",
                   file=sys.stderr, disable=not (self.progress and sys.stderr.isatty()),
                   dynamic_ncols=True, leave=False)  # fit logs one line per epoch instead
        while self.state.epoch < self.epochs:
            epoch = self.state.epoch + 1
            t0 = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            val = None
            if len(self.x_val):
                val, _ = self._evaluate(self.net, self.x_val, self.data.y_val, "validation")
            record = {"epoch": epoch, "train_loss": train_loss, "val_metric": val,
                      "lr": self._last_lr, "seconds": time.perf_counter() - t0}
            if tc.test_each_epoch:  # for curves only; selection below uses validation
                record["test_metric"], _ = self._evaluate(self.model, self.data.x_test,
                                                          self.data.y_test, "test")
            self._track_best(epoch, val)
            self.state.history.append(record)
            self.state.epoch = epoch
            if epoch < self.epochs and self._resume_due():
                self._save_resume()
            post = {"loss": f"{train_loss:.4f}"}
            if val is not None:
                post[f"val {metric}"] = f"{val:.4f}"
            bar.set_postfix(post)
            bar.update(1)
            if self.on_epoch is not None:
                self.on_epoch(record)
            if self.stop is not None and self.stop.is_set() and epoch < self.epochs:
                bar.close()
                self._save_resume()
                raise Stopped(f"stopped after epoch {epoch} of {self.epochs}; the same command "
                              f"resumes from there")
        bar.close()
        return self.state

    def _evaluate(self, net, x, y, desc: str):
        return evaluate(net, x, y, self.data, self.device, self.tc.eval_batch_size,
                        self.precision, self.progress, desc)

    def _track_best(self, epoch: int, val: Optional[float]) -> None:
        if val is None:  # no validation split: the last epoch is the one kept
            self.state.best_epoch, self.state.best_state = epoch, None
            return
        if np.isfinite(val) and val < self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = float(val), epoch
            self.state.best_state = {k: v.detach().to("cpu", copy=True)
                                     for k, v in checkpoint_state(self.model).items()}

    def _loader(self, epoch: int) -> DataLoader:
        ds = TensorDataset(torch.from_numpy(self.x_train), torch.from_numpy(self.data.y_train))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return DataLoader(ds, batch_size=self.budget.batch_size, shuffle=True, generator=gen,
                          num_workers=self.loader_opts.num_workers,
                          pin_memory=self.loader_opts.pin_memory)

    def _train_epoch(self, epoch: int) -> float:
        tc = self.tc
        torch.manual_seed(self.seed * 7919 + epoch)  # dropout / augmentation RNG
        self.net.train()
        # One iterator: tqdm.auto calls iter() on an iterable eagerly, and a second DataLoader
        # iterator would draw from the shuffle generator again (order then depends on workers).
        bar = tqdm(iter(self._loader(epoch)), total=self.n_batches, leave=False, file=sys.stderr,
                   desc=f"epoch {epoch}/{self.epochs}", disable=not (self.progress and sys.stderr.isatty()),
                   dynamic_ncols=True)
        self.opt.zero_grad(set_to_none=True)
        # On CUDA, reading the loss forces a device sync; do it every `sync_every` batches only.
        sync_every = 1 if self.device.type == "cpu" else 25
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, checked = 0, 0
        group_t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(bar):
            loss = self._step_loss(xb, yb)
            total += loss.detach().double() * len(xb)
            count += len(xb)
            if (i + 1) % sync_every == 0 or i + 1 == self.n_batches:
                mean = total.item() / count   # CPU: checked before each step (CUDA: every 25)
                if not math.isfinite(mean):
                    where = f"batch {i + 1}" if sync_every == 1 else f"batches {checked + 1}-{i + 1}"
                    raise TrainingDiverged(f"training loss became {mean} at epoch {epoch}, {where}; "
                                           f"lower train.lr or check the data for outliers")
                checked = i + 1
                bar.set_postfix(loss=f"{mean:.4f}")
            group_start = i - i % tc.accumulate   # a short last group averages its own batches
            (loss / min(tc.accumulate, self.n_batches - group_start)).backward()
            if (i + 1) % tc.accumulate == 0 or i + 1 == self.n_batches:
                self._optimizer_step()
                self._time_step(group_t0)
                group_t0 = time.perf_counter()
        bar.close()
        return total.item() / count

    def _step_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self.device, non_blocking=True)
        yb = yb.to(self.device, non_blocking=True)
        if self.data.augment is not None:
            xb = self.data.augment(xb)
        with autocast(self.device, self.precision):
            out = self.net(xb).float()
        if self._decode is not None:
            out, yb = self._decode(out), self._decode(yb)
        return self.loss_fn(out, yb)

    def _time_step(self, started: float) -> None:
        """Record the optimizer step that began at `started` (data loading, forward and
        backward of its batches, the update), for the first TIMED_STEPS steps."""
        if len(self.step_times) >= TIMED_STEPS:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step_times.append(time.perf_counter() - started)

    def step_seconds(self) -> Optional[float]:
        """Seconds per optimizer step: the median of the timed steps after the first (which
        pays for lazy initialisation), or the first when it is the only one."""
        times = self.step_times[1:] or self.step_times
        return float(np.median(times)) if times else None

    def _optimizer_step(self) -> None:
        if self.tc.clip:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.tc.clip)
        group = self.opt.param_groups[0]   # the rate this step used, in units of train.lr
        initial = group["initial_lr"]   # 0 when train.lr is 0
        self._last_lr = group["lr"] * self.tc.lr / initial if initial else 0.0
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)


def best_model(model: torch.nn.Module, state: TrainState) -> torch.nn.Module:
    """A copy of `model` holding the best-validation weights."""
    best = copy.deepcopy(model)
    if state.best_state is not None:
        load_checkpoint_state(best, state.best_state)
    return best
