"""params.yaml (or any YAML the pipeline reads) -> a plain tree, safely: the project's one YAML reader.

    tree = read_params_file("params.yaml")              # a params or Snakemake config file
    tree = yaml_load(text, "override 'runs.seeds=[0]'")  # any YAML text, named for its errors
    tree = apply_overrides(tree, ["preset=quick"])      # --set dotted.key=value

YAML 1.2 numbers (``1e-3`` is a float), no key given twice in one mapping, no alias bombs, nothing
nested past Python's recursion limit, and files that are not params files (a folder, not UTF-8,
megabytes) refused: each one line naming the file and the fix.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from cnnvit.errors import CnnvitError, first_line


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names one key twice: PyYAML would keep the last silently."""


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML implements YAML 1.1, where ``1e-3`` (no dot) is a string; YAML 1.2 reads a float.
    A key given twice in one mapping is refused (YAML forbids it; PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then an explicit key overrides the merged one, as meant
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the base constructor names it
                if earlier is not key_node.start_mark:
                    raise DuplicateKey(
                        None, None, f"key {key!r} at line {earlier.line + 1} is given again", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _unshare(node: Any) -> Any:
    """A YAML alias (``*paper_models``) loads as the very same object as its anchor; copying without a
    memo gives each use its own, so an override of one preset never edits another behind its back."""
    if isinstance(node, dict):
        return {key: _unshare(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshare(value) for value in node]
    return node


MAX_VALUES = 100_000  # a params file has a few hundred; an alias bomb ("billion laughs") has billions


def expanded_size(node: Any) -> int:
    """How many values ``node`` holds once every alias is written out, without writing them out:
    shared subtrees are counted once each and multiplied by their uses."""
    memo: dict[int, int] = {}

    def size(n: Any) -> int:
        if not isinstance(n, dict | list):
            return 1
        if id(n) not in memo:
            memo[id(n)] = 0  # a cycle (a recursive alias) counts as nothing more, and stops here
            children = n.values() if isinstance(n, dict) else n
            memo[id(n)] = 1 + sum(size(c) for c in children)
        return memo[id(n)]

    return size(node)


def refuse_alias_bomb(tree: Any, source: str) -> None:
    """Refuse a tree whose shared parts (YAML aliases) would expand past MAX_VALUES: whatever walks
    it (a schema check, Snakemake writing its config out) would take minutes and gigabytes."""
    try:
        n = expanded_size(tree)
    except RecursionError:
        raise CnnvitError(f"{source}: nested too deeply (or a recursive alias): simplify it") from None
    if n > MAX_VALUES:
        raise CnnvitError(
            f"{source}: its aliases expand to {n:,} values, more than any params file needs ({MAX_VALUES:,}): "
            "an alias bomb? write the values out or use fewer nested aliases"
        )


def yaml_load(text: str, source: str) -> Any:
    """The project's one YAML reader (params files, --set values, Snakemake's config files): YAML
    1.2 numbers, no duplicate keys, no alias bombs, nothing nested past Python's recursion limit."""
    try:
        tree = yaml.load(text, Loader=Yaml12Loader)
        refuse_alias_bomb(tree, source)
        return _unshare(tree)
    except RecursionError:
        raise CnnvitError(f"{source}: nested too deeply (or a recursive alias): simplify it") from None
    except DuplicateKey as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise CnnvitError(
            f"{source}: duplicate key{where} ({exc.problem}): YAML would keep only the last one silently; "
            "delete one of them"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise CnnvitError(f"{source}: not valid YAML{where} ({problem}): fix the syntax") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], the value read as YAML: ``[0, 1]``, ``null``, ``1e-4``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise CnnvitError(f"bad override {item!r}: write it as --set dotted.key=value")
    return key.split("."), (yaml_load(raw, f"override {short(item, 80)!r}") if raw != "" else "")


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        path, value = parse_override(item)
        node = cfg
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise CnnvitError(f"bad override {item!r}: {'.'.join(path[: i + 1])} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return cfg


def short(text: str, limit: int = 160) -> str:
    """A schema message quotes the offending value: keep an error line a line, whatever the value."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


MAX_PARAMS_BYTES = 1 << 20  # a params file is a few kB


def read_params_file(path: str | Path) -> Any:
    """A params (or Snakemake config) file's tree, through :func:`yaml_load`; anything that is not a
    readable UTF-8 text file of a sane size is one line naming it."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CnnvitError(f"params file {path} is a directory: pass the params.yaml inside it (--params)")
        if not path.exists():
            raise CnnvitError(f"params file {path} not found: run from the project root or pass --params")
        if (size := path.stat().st_size) > MAX_PARAMS_BYTES:
            raise CnnvitError(
                f"params file {path} is {size / 2**20:,.1f} MB, not a params file (a few kB): pass the right --params"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CnnvitError(
            f"params file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}): save it as UTF-8, or pass "
            "the right --params"
        ) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CnnvitError(f"cannot read params file {path} ({why}): fix its permissions or --params") from None
    return yaml_load(text, str(path))
