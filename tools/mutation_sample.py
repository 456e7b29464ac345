"""Mutation testing on a seeded random sample of each module's mutants (mutmut 3).

A full `mutmut run` over the science modules takes many hours on a laptop: each mutant reruns
the tests that call the mutated function, some of which fine-tune a model. A simple random
sample of each module's mutants gives its kill rate with a confidence interval in a fraction
of the time, and is what docs/testing.md reports.

    python tools/mutation_sample.py run --per-module 80 --seed 1   # generate, sample, test
    python tools/mutation_sample.py report                          # rates and survivors

`run` is resumable: mutants already checked keep their result (mutmut stores them in
`mutants/`), and the sample is written to `mutants/sample.txt`. Settings (modules, tests)
come from `[tool.mutmut]` in pyproject.toml. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants")
SAMPLE = MUTANTS / "sample.txt"
BATCH = 40          # mutants per mutmut call: progress is saved between calls
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}


def module_of(name: str) -> str:
    """'xmodal.ot.otdd.x_emd_cost__mutmut_2' -> 'xmodal.ot.otdd' (methods: '.xǁClassǁname')."""
    return name.split(".x")[0]


def mutmut(*args: str, **popen) -> int:
    return subprocess.call([str(Path(sys.executable).with_name("mutmut")), *args], **popen)


def names_by_module() -> dict[str, list[str]]:
    """Every generated mutant's name, by module (`xmodal.ot.otdd`), from mutmut's meta files."""
    out: dict[str, list[str]] = {}
    for meta in sorted(MUTANTS.glob("src/**/*.py.meta")):
        for name in sorted(json.loads(meta.read_text())["exit_code_by_key"]):
            out.setdefault(module_of(name), []).append(name)
    return out


def results() -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in MUTANTS.glob("src/**/*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def draw(per_module: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sample = []
    for module, names in names_by_module().items():
        sample += rng.sample(names, min(per_module, len(names)))
    return sample


def generate() -> None:
    """Generate the mutants and the per-test stats without checking any mutant: mutmut has no
    command for that, so run it with a filter that matches nothing (it then stops with
    'nothing matches', after saving both)."""
    print("generating mutants and collecting test stats (minutes)...", flush=True)
    MUTANTS.mkdir(exist_ok=True)
    log = MUTANTS / "generate.log"
    with log.open("w") as out:
        mutmut("run", "xmodal.no-such-mutant*", stdout=out, stderr=subprocess.STDOUT)
    if not names_by_module() or not (MUTANTS / "mutmut-stats.json").exists():
        sys.exit(f"mutmut could not generate the mutants or the test stats; see {log}")


def run(per_module: int, seed: int) -> None:
    if not names_by_module() or not (MUTANTS / "mutmut-stats.json").exists():
        generate()
    if not SAMPLE.exists():
        SAMPLE.write_text("\n".join(draw(per_module, seed)))
    sample = SAMPLE.read_text().split()
    todo = [n for n in sample if results().get(n) is None]
    print(f"{len(sample)} sampled mutants, {len(todo)} left to check", flush=True)
    for i in range(0, len(todo), BATCH):
        mutmut("run", *todo[i:i + BATCH])


def status(code) -> str:
    from mutmut.stats import status_by_exit_code
    return status_by_exit_code[code]


def report() -> None:
    from scipy.stats import binomtest
    sample, codes = SAMPLE.read_text().split(), results()
    by_module: dict[str, Counter] = {}
    survivors = []
    for name in sample:
        s = status(codes.get(name))
        by_module.setdefault(module_of(name), Counter())[s] += 1
        if s in ("survived", "no tests"):
            survivors.append(f"{s:9s} {name}")
    total = {m: len(v) for m, v in names_by_module().items()}
    print("| module | mutants | sampled | checked | detected | kill rate (95% CI) |")
    print("|---|---|---|---|---|---|")
    for module, c in sorted(by_module.items()):
        checked = sum(v for k, v in c.items() if k != "not checked")
        hit = sum(c[k] for k in DETECTED)
        if checked:
            ci = binomtest(hit, checked).proportion_ci(0.95, method="exact")
            rate = f"{hit / checked:.0%} ({ci.low:.0%}-{ci.high:.0%})"
        else:
            rate = "-"
        print(f"| {module} | {total.get(module, '?')} | {sum(c.values())} | {checked} | "
              f"{hit} | {rate} |")
    print("\nsurvivors (inspect with: mutmut show NAME):")
    print("\n".join(survivors) or "none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="generate the mutants, draw the sample, test it")
    r.add_argument("--per-module", type=int, default=80, help="mutants drawn per module")
    r.add_argument("--seed", type=int, default=1, help="seed of the draw")
    sub.add_parser("report", help="kill rate per module (Clopper-Pearson CI) and survivors")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.per_module, args.seed)
    elif not SAMPLE.exists():
        sys.exit(f"no sample in {SAMPLE}: run `python {sys.argv[0]} run` first")
    else:
        report()


if __name__ == "__main__":
    main()
