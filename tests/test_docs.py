"""The docs against the code: every config key, command, flag, default and path that README.md
and docs/*.md name exists and says what the code does. A renamed key or flag, or a changed
default, fails here until the docs follow."""

import argparse
import re
from pathlib import Path

import pytest
import yaml

from xmodal.cli.parser import FIT_FLAGS, build_parser
from xmodal.config import Config
from xmodal.config.load import all_keys
from xmodal.config.validate import flatten

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILE_ENDINGS = (".py", ".json", ".jsonl", ".txt", ".conll", ".npz", ".yaml", ".md", ".pt",
                ".safetensors", ".png", ".html", ".csv", ".db", ".npy", ".gz", ".h5")


def _code_spans(python: bool = True):
    """(file, line number, text) of every inline code span and every fenced code line (not
    those of python blocks when `python` is false: `run.predict` there is a variable's)."""
    for path in DOCS:
        fence = None
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fence = None if fence is not None else line.strip()[3:] or "text"
                continue
            if fence is not None:
                if python or fence != "python":
                    yield path.name, i, line
            else:
                for m in re.finditer(r"`([^`]+)`", line):
                    yield path.name, i, m.group(1)


KEYS = set(all_keys())
SECTIONS = sorted({k.split(".")[0] for k in KEYS})
KEY_RE = re.compile(r"(?<![\w./$-])((?:%s)\.[a-z_][a-z_0-9]*(?:\.[a-z_0-9*]+)?)(?![\w/(])"
                    % "|".join(SECTIONS))


def test_every_config_key_the_docs_name_exists():
    unknown = []
    for name, line, text in _code_spans(python=False):
        for key in KEY_RE.findall(text):
            if key.endswith(FILE_ENDINGS) or key.startswith("task.options."):
                continue
            if key not in KEYS and not any(k.startswith(key + ".") for k in KEYS):
                unknown.append(f"{name}:{line}: {key}")
    assert not unknown, unknown


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set:
    return {opt for a in parser._actions for opt in a.option_strings}


def _command_parser(words: list):
    """The sub-parser `xmodal WORDS...` reaches, and the words it used."""
    parser, used = build_parser(), []
    for w in words:
        sub = _subparsers(parser)
        if w not in sub:
            break
        parser, used = sub[w], used + [w]
    return parser, used


def _invocations():
    """(where, command words, flags) of every `xmodal ...` the docs show."""
    for name, line, text in _code_spans():
        for chunk in re.split(r"&&|\|\||[|;]", text):
            m = re.search(r"(?:^|[\s/])xmodal\s+(.*)", chunk)
            if not m:
                continue
            words = m.group(1).split()
            parser, used = _command_parser(words)
            flags = {w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z-]*(=.*)?", w)}
            yield f"{name}:{line}", used, parser, flags, words


def test_every_command_and_flag_the_docs_show_exists():
    bad = []
    for where, used, parser, flags, words in _invocations():
        if words and not used and not words[0].startswith("-") and words[0].isidentifier():
            bad.append(f"{where}: no command `xmodal {words[0]}`")
            continue
        if _subparsers(parser):        # `xmodal study` alone: names the command group
            continue
        missing = sorted(flags - _options(parser))
        if missing:
            bad.append(f"{where}: `xmodal {' '.join(used)}` has no {missing}")
    assert not bad, bad


def _fit_table() -> dict:
    """README's fit flag table: {flag: (config key, meaning)}."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `(--[a-z-]+)[^`]*` \| `?([a-z_.]*)`? \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_readme_fit_table_names_every_fit_flag_with_its_config_key():
    table = _fit_table()
    for flag, key, _typ, _help in FIT_FLAGS:
        assert flag in table, f"README's fit table lacks {flag}"
        assert table[flag][0] == key, (flag, table[flag][0], key)
    fit = _subparsers(build_parser())["fit"]
    assert set(table) <= _options(fit), set(table) - _options(fit)


DEFAULTS = flatten(Config().to_dict())


def _same(documented: str, actual) -> bool:
    documented = documented.strip().strip("`")
    if documented in ("automatic", "none", "null", "the"):   # "default: the last epoch"
        return actual is None or actual == documented
    try:
        value = yaml.safe_load(documented)
    except yaml.YAMLError:
        return documented == str(actual)
    if isinstance(value, str) and isinstance(actual, (int, float)):
        try:
            value = float(value)
        except ValueError:
            return False
    if isinstance(actual, (list, tuple)):
        return list(value or []) == list(actual)
    if isinstance(actual, float) or isinstance(value, float):
        return value is not None and actual is not None and float(value) == pytest.approx(actual)
    return value == actual


def _documented_defaults():
    """(where, key, documented default) from `key` (default X) and the fit table."""
    for flag, (key, meaning) in _fit_table().items():
        m = (re.search(r"(?:^|\()default:? ([^,)]+)", meaning)
             or re.search(r"`([^`]+)` \(default\)", meaning))
        if key and m:
            yield f"README fit table {flag}", key, m.group(1)
    for path in DOCS:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"`([a-z]+\.[a-z_]+)` \([^()`]*?default:? (`[^`]+`|[^`),;\s]+)",
                                 line):
                if m.group(1) in DEFAULTS:
                    yield f"{path.name}:{i}", m.group(1), m.group(2)


def test_documented_defaults_are_the_configs():
    seen, wrong = 0, []
    for where, key, documented in _documented_defaults():
        seen += 1
        if not _same(documented, DEFAULTS[key]):
            wrong.append(f"{where}: {key} documented {documented!r}, is {DEFAULTS[key]!r}")
    assert not wrong, wrong
    assert seen >= 10      # the patterns still find the docs' defaults


def test_every_path_the_docs_link_or_name_exists():
    missing = []
    for path in DOCS:
        text = path.read_text()
        links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        named = re.findall(r"`((?:src|docs|benchmarks|tests|\.ci)/[\w./-]+)`", text)
        for ref in links + named:
            if re.match(r"[a-z]+://", ref) or "*" in ref:
                continue
            base = path.parent if ref in links else ROOT
            if not (base / ref).exists():
                missing.append(f"{path.name}: {ref}")
    assert not missing, missing


def test_readme_task_table_is_what_xmodal_tasks_prints(capsys):
    from xmodal.cli import main
    assert main(["tasks"]) == 0
    printed = capsys.readouterr().out.split("\n\n")[0].strip().splitlines()
    readme = (ROOT / "README.md").read_text()
    start = readme.index(printed[0])
    assert readme[start:].splitlines()[:len(printed)] == printed


LAYERS = ("cli", "config", "data", "model", "ot", "stages", "runs", "study", "io")
DOTTED_RE = re.compile(r"(?:xmodal\.)?((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(LAYERS))


def _resolve(dotted: str) -> bool:
    """`runs.fit.preflight` names something: the longest importable module prefix, then
    attributes."""
    import importlib
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("xmodal." + ".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_module_and_function_the_docs_name_exists():
    unresolved = []
    for name, line, text in _code_spans(python=False):
        m = DOTTED_RE.fullmatch(text.strip().rstrip("()"))
        if m and not m.group(1).endswith(FILE_ENDINGS) and m.group(1) not in KEYS \
                and not any(k.startswith(m.group(1) + ".") for k in KEYS):
            if not _resolve(m.group(1)):
                unresolved.append(f"{name}:{line}: {text}")
    assert not unresolved, unresolved


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "src" / "xmodal").rglob("*.py"))
               if p.name != "__init__.py"
               and not re.search(rf"`{p.stem}`|{p.stem}\.py|`{p.stem}/`", doc)]
    assert not missing, f"docs/architecture.md does not name {missing}"
