"""Reading YAML safely, for configs and study specs alike: UTF-8 only, and no document that
would hang or crash later (recursive aliases, alias bombs). Every problem is one `UserError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


MAX_YAML_VALUES = 100_000   # values a YAML document may expand to through aliases


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.2; YAML 1.1 makes it a string) and
    refuses a mapping that repeats a key (YAML 1.1 lets the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:        # unhashable key: SafeLoader's own error follows
                    break
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (keep one)",
                        key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist")
    data = parse_yaml(read_text_file(path, "config file"), f"config file '{path}'") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping at the top level")
    return data


def read_text_file(path: Path, role: str) -> str:
    """The UTF-8 text of `path`; an unreadable or non-UTF-8 file is one `UserError`."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{role} '{path}' is not UTF-8 text (bad byte at offset {exc.start}); "
                        f"save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {role} '{path}': {exc.strerror or exc}") from None


def parse_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load` that refuses what would hang or crash later: recursive aliases and
    documents that expand to more than MAX_YAML_VALUES values through aliases (alias bombs).
    Every problem is one `UserError` line starting with `what`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), what)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict, open_: set, what: str) -> int:
    """Number of values `node` stands for once every alias is expanded (memoised per node)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise UserError(f"{what}: a YAML alias refers to its own anchor (recursive alias)")
    open_.add(key)
    children = node.value if isinstance(node.value, list) else []
    flat = [c for item in children for c in (item if isinstance(item, tuple) else (item,))]
    size = 1 + sum(_expanded_size(c, sizes, open_, what) for c in flat)
    open_.discard(key)
    if size > MAX_YAML_VALUES:
        raise UserError(f"{what}: YAML aliases expand it to more than {MAX_YAML_VALUES:,} "
                        f"values (an alias bomb?); write the values out instead")
    sizes[key] = size
    return size


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`problem (line L, column C)` of a YAML error, on one line."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())
