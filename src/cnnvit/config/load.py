"""params.yaml -> typed, validated configs: the one loader every ``cnnvit`` command and the
Snakefile go through.

    params = load_params("params.yaml", ["preset=quick"])        # --set overrides
    params = params_from_dict(snakemake_config, "config")       # what Snakemake loaded
    for run in params.all_runs():
        cfg = run_config(params, run)                           # cnnvit.config.runs: one training

Loading reads YAML 1.2 numbers (``1e-3`` is a float), renames deprecated keys with a warning,
turns numeric strings into numbers where the schema wants a number, checks the schema
(``params.schema.json`` beside this file; its model part is generated from the spec classes by
``cnnvit schema``) and the cross-references it cannot express, and only then builds the
dataclasses of :mod:`cnnvit.config.types`. Every error names the dotted key and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cnnvit.cifar import NUM_CLASSES, subset_size
from cnnvit.config.types import Analysis, Cost, Data, Params, Preset, Recipe, Robustness, Runs, Runtime
from cnnvit.errors import CnnvitError, first_line

__all__ = ["Params", "load_params", "params_from_dict"]

PACKAGE_DATA = ("params.schema.json",)  # read at run time, beside this file


# ----------------------------------------------------------------------------- reading


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names one key twice: PyYAML would keep the last silently."""


class _Yaml12Loader(yaml.SafeLoader):
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


_Yaml12Loader.add_implicit_resolver(
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
        tree = yaml.load(text, Loader=_Yaml12Loader)
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


# ----------------------------------------------------------------------------- deprecations

# old top-level key -> new. `profile` was easy to mistake for Snakemake's workflow profiles.
RENAMED_SECTIONS = {"train": "runtime", "profile": "preset", "profiles": "presets"}
RENAMED_SCHEDULES = {"onecycle": "linear"}  # it always was linear warm-up, then linear decay


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def migrate(cfg: dict, source: str) -> dict:
    """Rename what an older params file calls by a deprecated name, saying so once."""
    cfg = copy.deepcopy(cfg)
    for old, new in RENAMED_SECTIONS.items():
        if old not in cfg:
            continue
        if new in cfg and cfg[new] != cfg[old] and isinstance(cfg[old], dict):
            merged = {**cfg[new], **cfg[old]}
            warn(f"{source}: `{old}:` is deprecated, renamed `{new}:`; its keys override `{new}:`")
            cfg[new] = merged
        else:
            warn(f"{source}: `{old}:` is deprecated and was renamed `{new}:`; rename it (or --set {new}.KEY)")
            cfg[new] = cfg[old]
        del cfg[old]
    for name, recipe in (cfg.get("recipes") or {}).items():
        schedule = recipe.get("schedule") if isinstance(recipe, dict) else None
        if isinstance(schedule, str) and schedule in RENAMED_SCHEDULES:
            new_name = RENAMED_SCHEDULES[schedule]
            warn(f"{source}: recipes.{name}.schedule: {schedule!r} is deprecated, now {new_name!r}")
            recipe["schedule"] = new_name
    return cfg


# ----------------------------------------------------------------------------- validation


@cache
def schema() -> dict:
    return json.loads(resources.files(__package__).joinpath(PACKAGE_DATA[0]).read_text())


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _scalar(text: str) -> Any:
    """What a YAML 1.2 reader makes of a plain scalar (``null``, ``true``, ``1e-4``), else the text."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError:
        return text


def coerce_scalars(cfg: dict) -> dict:
    """Scalars that arrive as strings become what YAML 1.2 reads them as (``"1e-4"`` from a YAML 1.1
    reader, ``"null"``/``"true"``/``"3"`` from Snakemake's ``--config``, which reads nested values
    as strings), but only where the string is invalid and the value it stands for is valid."""
    cfg = copy.deepcopy(cfg)
    validator = _validator()
    for _ in range(1000):
        fixed = False
        for err in validator.iter_errors(cfg):
            if not isinstance(err.instance, str):
                continue
            value = _scalar(err.instance)
            if isinstance(value, str | list | dict):
                continue
            # Convert where the value fits (md5 "null" -> None) or has the type asked for, so that a
            # bad number (lr "-1") is then reported as the number it is, with the rule it breaks.
            wanted = err.validator_value if err.validator == "type" else []
            wanted = [wanted] if isinstance(wanted, str) else wanted
            fits = any(validator.is_type(value, t) for t in wanted)
            if not fits and not validator.evolve(schema=err.schema).is_valid(value):
                continue
            *parents, last = err.absolute_path
            node = cfg
            for part in parents:
                node = node[part]
            node[last] = value
            fixed = True
            break
        if not fixed:
            return cfg
    return cfg


def _message(err: jsonschema.ValidationError, source: str) -> str:
    where = _dotted(err.absolute_path)
    schema_: Any = err.schema  # a mapping: our schema has no boolean subschemas
    if err.validator == "additionalProperties":
        allowed = sorted(schema_.get("properties", {}))
        instance: Any = err.instance
        extra = sorted(set(instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if err.absolute_path else k for k in extra)
        arch = err.instance.get("arch") if isinstance(err.instance, dict) else None
        kind = f" for arch {arch}" if arch and "arch" in allowed else ""
        return f"{source}: unknown key {keys}{kind}: remove or rename it; allowed keys: {', '.join(allowed)}"
    if err.validator in ("minItems", "maxItems") and "x-same-length" in schema_:
        a, b = schema_["x-same-length"]
        entry = _dotted(list(err.absolute_path)[:-1])
        return f"{source}: {entry}: {a} and {b} must have the same length (one entry per stage): fix the entry"
    if "x-divides" in schema_:
        a, b = schema_["x-divides"]
        entry = _dotted(list(err.absolute_path)[:-1])
        if isinstance(b, int):
            why = f"{a} {err.instance} must divide the image side ({b} pixels)"
        else:
            why = f"{a} {err.validator_value} must divide {b} {err.instance}"
        return f"{source}: {entry}: {why}, or the model cannot be built: fix the entry"
    if err.validator == "required":
        missing = [k for k in schema_.get("required", []) if isinstance(err.instance, dict) and k not in err.instance]
        if len(missing) > 1:
            return f"{source}: {where}: missing required keys {', '.join(missing)}: add them"
        return f"{source}: {where}: {err.message}: add it"
    return f"{source}: {where}: {short(err.message)}: fix this value"


def short(text: str, limit: int = 160) -> str:
    """A schema message quotes the offending value: keep an error line a line, whatever the value."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


def non_finite(node: Any, path: tuple = ()) -> tuple[tuple, float] | None:
    """The first NaN or infinity in a tree (its path and value), or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if found := non_finite(child, (*path, key)):
            return found
    return None


def check(cfg: dict, source: str = "params.yaml") -> None:
    """Every number finite, the schema, then the cross-references it cannot express. Raises on
    the first problem."""
    # JSON Schema's bounds are comparisons, and every comparison with NaN is false: a `.nan` passes
    # `minimum: 0` and `maximum: 1` alike. No key of params.yaml means anything as NaN or infinity.
    if found := non_finite(cfg):
        where, value = found
        raise CnnvitError(f"{source}: {_dotted(where)}: {value} is not a finite number: give a number")
    errors = list(_validator().iter_errors(cfg))
    if errors:
        # the deepest error is the most specific one (a model's unknown key, not "allOf failed")
        err = max(errors, key=lambda e: (len(e.absolute_path), e.validator == "additionalProperties"))
        raise CnnvitError(_message(err, source))
    data = cfg["data"]
    if not (data.get("md5") or data.get("sha256")):
        raise CnnvitError(f"{source}: data: no checksum: set data.sha256 (or data.md5)")
    preset = cfg["preset"]
    if preset not in cfg["presets"]:
        known = ", ".join(sorted(cfg["presets"]))
        raise CnnvitError(f"{source}: preset: unknown preset {preset!r}; use one of {known}")
    for recipe in cfg["runs"]["recipes"]:
        if recipe not in cfg["recipes"]:
            known = ", ".join(sorted(cfg["recipes"]))
            raise CnnvitError(
                f"{source}: runs.recipes: unknown recipe {recipe!r}; define recipes.{recipe} or use one of {known}"
            )
    models = cfg["presets"][preset]["models"]
    for model in cfg["runs"]["models"]:
        if model not in models:
            raise CnnvitError(
                f"{source}: runs.models: model {model!r} is not defined in preset {preset!r}; define "
                f"presets.{preset}.models.{model} or use one of {', '.join(sorted(models))}"
            )
    check_claims(cfg, source)
    check_fractions(cfg["runs"].get("train_fractions", [1.0]), known_pool(cfg), source)
    check_test_subsets(cfg, source)


def check_claims(cfg: dict, source: str) -> None:
    """Each claim to test needs both its models among the runs: a verdict must never be computed
    from the wrong pairs, nor a claim dropped without a word."""
    from cnnvit.paper import CLAIMS

    runs = cfg["runs"]["models"]
    for claim in CLAIMS:
        missing = [m for m in claim.models if m not in runs]
        if claim.id in cfg["analysis"]["claims"] and missing:
            raise CnnvitError(
                f"{source}: analysis.claims: {claim.id} needs {' and '.join(missing)}, which runs.models does not "
                f"list: add {' and '.join(missing)} to runs.models, or drop {claim.id} from analysis.claims"
            )


def known_pool(cfg: dict) -> int:
    """The training images a run's fraction is taken of, when params alone tell (else 0): the
    preset's train_size, or what data.expect_train leaves after the validation carve."""
    data, preset = cfg["data"], cfg["presets"][cfg["preset"]]
    whole = data["expect_train"] - data["val_size"] if data["expect_train"] else 0
    return min(preset["train_size"], whole) if preset["train_size"] and whole else preset["train_size"] or whole


def check_fractions(fractions, pool: int, source: str, what: str = "runs.train_fractions") -> None:
    """Each fraction trains at least one image a class, and no two train the same subset (the
    subsets are nested: two names for one subset, and one point shown twice in a report). ``pool``
    is the training images (0: not known yet; `cnnvit train` checks again with the prepared data)."""
    if not pool:
        return
    seen: dict[int, float] = {}
    for f in sorted(fractions):
        n = subset_size(pool, 0, f)
        if n < NUM_CLASSES:
            raise CnnvitError(
                f"{source}: {what}: {f:.10g} of {pool:,} training images is {n:,}, fewer than one image a class "
                f"({NUM_CLASSES}): use at least {ceil_2(NUM_CLASSES / pool):g}"
            )
        if n in seen:
            raise CnnvitError(
                f"{source}: {what}: {seen[n]:.10g} and {f:.10g} both train the same {n:,} images (of {pool:,}): "
                "keep one of them"
            )
        seen[n] = f


def ceil_2(x: float) -> float:
    """``x`` rounded up to two significant digits (a bound to quote that still holds)."""
    scale = 10.0 ** (1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale


def check_test_subsets(cfg: dict, source: str) -> None:
    """A preset's robustness and attention images are taken from its test images: more than there
    are would be cut down without a word (cnnvit corrupt checks again once the data is prepared)."""
    name = cfg["preset"]
    preset, expect = cfg["presets"][name], cfg["data"]["expect_test"]
    tests = min(preset["test_size"], expect) if preset["test_size"] and expect else preset["test_size"] or expect
    for key in ("robustness_images", "attention_images"):
        if tests and preset.get(key, 0) > tests:
            raise CnnvitError(
                f"{source}: presets.{name}.{key}: {preset[key]:,} is more than the preset's {tests:,} test images: "
                f"use at most {tests:,}" + (" (0 = all of them)" if key == "robustness_images" else "")
            )


def _build(cls, d: dict):
    """The dataclass from a schema-checked dict: lists become tuples, and an int where the field
    is a float becomes a float (so that 0 and 0.0 make the same run identity)."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}

    def value(k, v):
        if isinstance(v, list):
            return tuple(float(x) if kinds[k].startswith("tuple[float") else x for x in v)
        return float(v) if kinds[k].startswith("float") and type(v) is int else v

    return cls(**{k: value(k, v) for k, v in d.items()})


def params_from_dict(cfg: dict, source: str = "params.yaml") -> Params:
    """Validate a params dict (from a file or from Snakemake's config) and build the typed tree."""
    if not isinstance(cfg, dict):
        raise CnnvitError(f"{source}: expected a mapping at the top level")
    refuse_alias_bomb(cfg, source)  # before anything walks it: Snakemake's config comes straight from YAML
    cfg = coerce_scalars(migrate(cfg, source))
    check(cfg, source)
    return Params(
        raw=cfg,
        preset=cfg["preset"],
        data=_build(Data, cfg["data"]),
        runs=_build(Runs, cfg["runs"]),
        runtime=_build(Runtime, cfg["runtime"]),
        analysis=_build(Analysis, cfg["analysis"]),
        robustness=_build(Robustness, cfg["robustness"]),
        cost=_build(Cost, cfg["cost"]),
        recipes={name: _build(Recipe, r) for name, r in cfg["recipes"].items()},
        presets={name: _build(Preset, p) for name, p in cfg["presets"].items()},
    )


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


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    raw = read_params_file(path)
    if not isinstance(raw, dict):
        raise CnnvitError(f"{path}: expected a mapping at the top level")
    return params_from_dict(apply_overrides(raw, overrides or []), str(path))
