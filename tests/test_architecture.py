"""The shape of the package, checked from the code's own imports: layers import downwards only,
no import cycles, one table per choice, and run identities that existing folders rely on."""

import ast
from pathlib import Path

import pytest

from xmodal.config import config_hash, load_config
from xmodal.config.choices import FINETUNE_MODES
from xmodal.config.identity import alignment_key

SRC = Path(__file__).resolve().parents[1] / "src" / "xmodal"
# Lower layers first; a module may import its own layer and the ones before it.
LAYERS = [("errors", "io"), ("config",), ("data",), ("model", "ot"), ("stages",), ("runs",),
          ("study",), ("cli", "__init__", "__main__")]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _imports(path: Path) -> set[str]:
    """Every xmodal module `path` imports, at module level or inside functions."""
    mod = _module(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if mod == "__init__":
        package = []
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            for name in names:   # `from . import x` imports the module x when there is one
                sub = f"{target}.{name}" if target else name
                out.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xmodal."):
            out.add(node.module.removeprefix("xmodal."))
    return {m for m in out if m}


def _exists(mod: str) -> bool:
    path = SRC.joinpath(*mod.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


GRAPH = {_module(p): _imports(p) for p in SRC.rglob("*.py")}


def _layer(mod: str) -> int:
    return RANK[mod.split(".")[0]]


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = [(m, t) for m, targets in GRAPH.items() for t in targets
              if m != "__init__" and _layer(t) > _layer(m)]
    assert upward == []


def test_no_import_cycles_between_modules():
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(GRAPH.get(m, ())):
            if t == m or t not in GRAPH or m.startswith(t + "."):
                continue   # a package's own __init__ is imported on the way to its modules
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_each_fine_tune_mode_is_spelled_in_the_choices_table_and_at_most_one_other_file():
    """(`layernorm` is also a substring of the body's parameter names, matched in finetune.py.)"""
    spelled = {}
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for mode in FINETUNE_MODES:
            if mode != "all" and f'"{mode}"' in text:
                spelled.setdefault(mode, set()).add(str(path.relative_to(SRC)))
    assert all("config/choices.py" in files and len(files) <= 2 for files in spelled.values()), \
        spelled


# Hashes of today's configurations, computed before the package was split into layers: the
# same configuration must keep its run id, so existing run folders and study stores resume.
PINNED = [
    ([], "4d1d93ca4a"),
    (["task.name=digits", "body.num_layers=2"], "7d4e1b02c5"),
    (["task.name=dna", "align.proxy=text", "align.epochs=3", "train.finetune=lora"], "6c26c897e3"),
    (["baseline.method=logreg", "task.name=gunpoint", "run.seed=2"], "c313cb8ebd"),
    (["task.name=darcy", "train.epochs=5", "body.pretrained=false", "align.max_iter=500"],
     "696a8dd9d7"),
]


@pytest.mark.parametrize("overrides, expected", PINNED)
def test_config_hash_is_unchanged_for_existing_configurations(overrides, expected):
    assert config_hash(load_config(overrides=overrides)) == expected


def test_alignment_key_is_unchanged_for_an_existing_stage():
    cfg = load_config(overrides=["task.name=dna", "align.proxy=text", "align.epochs=3"])
    assert alignment_key(cfg) == "c9d0206ae8bbeee7"
