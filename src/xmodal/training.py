"""Stage 3 (refine): the fine-tuning loop, optimisers, LR schedules and batched evaluation.

Correct where the reference code was not: the schedule never goes below zero, the scheduler
steps once per optimizer step, the loss is divided by the accumulation count, gradients are
clipped once on the accumulated gradient, model selection uses the validation split, and the
metric is computed over the whole evaluation set. Training state is snapshotted after an
epoch when `run.resume_interval` seconds have passed since the last snapshot (tensors and plain
data only, read back with `weights_only=True`), and a resumed run continues bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
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

from .config import Config, TrainConfig
from .metrics import compute_metric, make_loss
from .model import CrossModalModel
from .tasks import TaskData
from .artifacts import atomic_torch_save


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


def param_groups(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> list[dict]:
    """One group per part: embedder and predictor at `lr` x their multipliers, the rest at
    `lr` (a model without those parts is one group)."""
    mults = {"embedder": cfg.embedder_lr_mult, "predictor": cfg.predictor_lr_mult}
    groups = {name: [] for name in ("body", *mults)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = name.split(".", 1)[0]
            groups[part if part in mults else "body"].append(p)
    return [{"params": ps, "lr": lr * mults.get(part, 1.0), "name": part}
            for part, ps in groups.items() if ps]


START_OVER = "rerun with --force (or delete the run folder) to start this run over"


def read_resume(path: Path) -> Optional[dict]:
    """The snapshot in `path` (None when absent), read with `weights_only=True`: tensors and
    plain data only, so a crafted file cannot run code. An unreadable one is a `UserError`."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        from .errors import UserError
        raise UserError(f"run folder file {path} cannot be resumed from ({one_line(exc)}); "
                        f"{START_OVER}") from None


def one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters (for one-line errors)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """`params`: a model (grouped by `param_groups`) or an iterable of parameters."""
    if isinstance(params, torch.nn.Module):
        params = param_groups(params, cfg, lr)
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class Budget:
    """How long fine-tuning runs: the resolved batch size, epochs and steps per epoch."""
    batch_size: int
    epochs: int
    steps_per_epoch: int
    rule: str

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def resolve_budget(tc: TrainConfig, n_train: int) -> Budget:
    """The training budget for `n_train` samples (README, "The training budget").

    Unset `batch_size`: min(32, max(8, n_train // 8)), so a small set still gets about eight
    steps per epoch. Unset `epochs`: enough epochs for `min_steps` optimizer steps, at most
    `max_epochs`; a 40-sample set gets as many updates as a 40,000-sample one needs at least.
    """
    batch = tc.batch_size or min(32, max(8, n_train // 8))
    batch = max(1, min(batch, n_train))
    steps = math.ceil(math.ceil(n_train / batch) / tc.accumulate)
    if tc.epochs is not None:
        return Budget(batch, tc.epochs, steps, "train.epochs")
    epochs = min(tc.max_epochs, max(1, math.ceil(tc.min_steps / steps)))
    return Budget(batch, epochs, steps, f"auto: >= {tc.min_steps} steps, <= {tc.max_epochs} epochs")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine / linear decay to 0 at `total`; never negative."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def make_scheduler(opt, total: int, warmup: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import UserError
        raise UserError("run.device is 'cuda' but no CUDA device is available; set run.device "
                        "to cpu or auto (--device cpu)")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto` -> bf16 on a CUDA device that supports it or a CPU with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if resolve_precision(device, precision) == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


EVAL_BAR_DELAY = 2.0   # seconds: quick evaluations never show a bar


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int, device: torch.device,
            precision: str = "fp32", progress: bool = False,
            desc: str = "evaluating") -> np.ndarray:
    """Batched forward pass; only one batch lives on the device at a time. With `progress`, a
    transient bar on a terminal once the pass has taken EVAL_BAR_DELAY seconds."""
    model.eval()
    outs = []
    starts = range(0, len(x), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, file=sys.stderr,
                      disable=not (progress and sys.stderr.isatty()), delay=EVAL_BAR_DELAY,
                      dynamic_ncols=True):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device, non_blocking=True)
        with autocast(device, precision):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs).numpy()


def evaluate(model, x, y, data: TaskData, cfg: Config, device, progress: bool = False,
             desc: str = "evaluating") -> tuple[float, dict]:
    out = predict(model, x, cfg.train.eval_batch_size, device, cfg.run.precision, progress, desc)
    if data.spec.kind == "dense":
        out, y = data.decode_y(out), data.decode_y(y)
    return compute_metric(data.spec.metric, out, y)


@dataclass
class TrainState:
    epoch: int = 0                      # epochs completed
    best_metric: float = float("inf")
    best_epoch: int = -1
    best_state: Optional[dict] = None
    history: list = field(default_factory=list)


class Trainer:
    """Fine-tunes `model` on `data`; `run()` returns the final `TrainState`."""

    def __init__(self, model: CrossModalModel, data: TaskData, cfg: Config, device: torch.device,
                 resume_path: Optional[Path] = None, on_epoch: Optional[Callable] = None,
                 progress: bool = True):
        self.model, self.data, self.cfg, self.device = model.to(device), data, cfg, device
        self.resume_path, self.on_epoch, self.progress = resume_path, on_epoch, progress
        tc = cfg.train
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
            self.model.load_state_dict(blob["model"])
            self.opt.load_state_dict(blob["optimizer"])
            self.sched.load_state_dict(blob["scheduler"])
            self.state = TrainState(**blob["state"])
        except Exception as exc:
            from .errors import UserError
            raise UserError(f"run folder file {self.resume_path} cannot be resumed from "
                            f"({one_line(exc)}); {START_OVER}") from None
        return True

    def _resume_due(self) -> bool:
        return time.monotonic() - self._last_save >= self.cfg.run.resume_interval

    def _save_resume(self) -> None:
        if self.resume_path is None:
            return
        self._last_save = time.monotonic()
        state = {f.name: getattr(self.state, f.name) for f in fields(TrainState)}
        atomic_torch_save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                           "scheduler": self.sched.state_dict(), "state": state},
                          self.resume_path)

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainState:
        tc = self.cfg.train
        metric = self.data.spec.metric
        bar = tqdm(total=self.epochs, initial=self.state.epoch, desc="fine-tuning", unit="epoch",
                   file=sys.stderr, disable=not (self.progress and sys.stderr.isatty()),
                   dynamic_ncols=True, leave=False)  # fit logs one line per epoch instead
        while self.state.epoch < self.epochs:
            epoch = self.state.epoch + 1
            t0 = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            val = None
            if len(self.data.x_val):
                val, _ = evaluate(self.model, self.data.x_val, self.data.y_val, self.data,
                                  self.cfg, self.device, self.progress, "validation")
            record = {"epoch": epoch, "train_loss": train_loss, "val_metric": val,
                      "lr": self._last_lr, "seconds": time.perf_counter() - t0}
            if tc.test_each_epoch:  # for curves only; selection below uses validation
                record["test_metric"], _ = evaluate(self.model, self.data.x_test, self.data.y_test,
                                                    self.data, self.cfg, self.device,
                                                    self.progress, "test")
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
        bar.close()
        return self.state

    def _track_best(self, epoch: int, val: Optional[float]) -> None:
        if val is None:  # no validation split: the last epoch is the one kept
            self.state.best_epoch, self.state.best_state = epoch, None
            return
        if np.isfinite(val) and val < self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = float(val), epoch
            self.state.best_state = {k: v.detach().to("cpu", copy=True)
                                     for k, v in self.model.state_dict().items()}

    def _loader(self, epoch: int) -> DataLoader:
        ds = TensorDataset(torch.from_numpy(self.data.x_train), torch.from_numpy(self.data.y_train))
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 100_003 + epoch)
        return DataLoader(ds, batch_size=self.budget.batch_size, shuffle=True, generator=gen,
                          num_workers=self.cfg.run.num_workers, pin_memory=self.cfg.run.pin_memory)

    def _train_epoch(self, epoch: int) -> float:
        tc, model = self.cfg.train, self.model
        torch.manual_seed(self.cfg.run.seed * 7919 + epoch)  # dropout / augmentation RNG
        model.train()
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
        bar.close()
        return total.item() / count

    def _step_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self.device, non_blocking=True)
        yb = yb.to(self.device, non_blocking=True)
        if self.data.augment is not None:
            xb = self.data.augment(xb)
        with autocast(self.device, self.cfg.run.precision):
            out = self.model(xb).float()
        if self._decode is not None:
            out, yb = self._decode(out), self._decode(yb)
        return self.loss_fn(out, yb)

    def _optimizer_step(self) -> None:
        if self.cfg.train.clip:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.clip)
        group = self.opt.param_groups[0]   # the rate this step used, in units of train.lr
        self._last_lr = group["lr"] * self.cfg.train.lr / group["initial_lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)


def best_model(model: torch.nn.Module, state: TrainState) -> torch.nn.Module:
    """A copy of `model` holding the best-validation weights."""
    best = copy.deepcopy(model)
    if state.best_state is not None:
        best.load_state_dict(state.best_state)
    return best
