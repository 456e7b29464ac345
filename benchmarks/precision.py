"""Benchmark: CPU bf16 autocast against fp32 for one MiniLM training step, by batch shape.

For each (batch, tokens) shape, one process builds the bundled MiniLM body (all 6 layers) with
a linear head and times forward + backward + AdamW step under `torch.autocast("cpu",
torch.bfloat16)` and in plain fp32, alternating the two (order swapped every repeat) so that
machine load affects both alike. It reports the median process CPU seconds per step (steadier
than wall time on a busy machine) and the ratio bf16/fp32 (below 1: bf16 is faster).

    python benchmarks/precision.py                    # shapes 8x12, 32x16, 32x64; 1 thread
    python benchmarks/precision.py --threads 2 --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from xmodal.model.bodies import load_body  # noqa: E402
from xmodal.config import BodyConfig  # noqa: E402
from xmodal.stages.device import cpu_has_bf16

SHAPES = [(8, 12), (32, 16), (32, 64)]   # small UCR default, digits default, the shape


def step_seconds(body, head, opt, x, y, bf16: bool, steps: int) -> float:
    t0 = time.process_time()
    for _ in range(steps):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast(
            "cpu", enabled=False)
        with ctx:
            hidden, _ = body(x, (x.shape[1],))
            out = head(hidden.mean(dim=1)).float()
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.process_time() - t0) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    body = load_body(BodyConfig(name="minilm"))
    body.train()
    dim = body.info.in_dim
    print(f"# CPU bf16 vs fp32, MiniLM 6 layers, {args.threads} thread(s), native bf16: "
          f"{cpu_has_bf16()}\n")
    print("| batch x tokens | fp32 CPU s/step | bf16 CPU s/step | bf16/fp32 |")
    print("|---|---|---|---|")
    for batch, tokens in SHAPES:
        head = torch.nn.Linear(body.info.out_dim, 4)
        opt = torch.optim.AdamW(list(body.parameters()) + list(head.parameters()), lr=1e-5)
        x = torch.randn(batch, tokens, dim)
        y = torch.randint(0, 4, (batch,))
        step_seconds(body, head, opt, x, y, True, 1)     # warm-up, both paths
        step_seconds(body, head, opt, x, y, False, 1)
        times = {True: [], False: []}
        for rep in range(args.repeats):
            for bf16 in ((True, False) if rep % 2 else (False, True)):
                times[bf16].append(step_seconds(body, head, opt, x, y, bf16, args.steps))
        fp, bf = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {batch} x {tokens} | {fp:.3f} | {bf:.3f} | {bf / fp:.2f} |", flush=True)


if __name__ == "__main__":
    main()
