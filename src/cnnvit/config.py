"""The single loader for params.yaml: read, apply ``--set`` overrides, validate, resolve.

Every ``cnnvit`` subcommand and the Snakefile go through here, against the one JSON schema
``params.schema.json`` (Snakemake's ``validate()`` reads the same file). Errors name the
offending dotted key and say how to fix it.

It also knows which keys each pipeline stage reads (:func:`stage_param_keys`): dvc.yaml lists
exactly those, and Snakemake puts exactly those values in each rule's ``params`` so that a
change re-runs only the jobs that read it. A test holds the three together.

    from cnnvit.config import load_config, run_config
    cfg = load_config("params.yaml", ["profile=quick"])
    rc = run_config(cfg, "vit", "modern", 0)
"""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cnnvit.errors import CnnvitError

SCHEMA_PATH = Path(str(resources.files("cnnvit") / "params.schema.json"))


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed value). Values are YAML (``[0,1]``, ``null``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise CnnvitError(f"bad override {item!r}: write it as --set dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise CnnvitError(f"bad override {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        path, value = parse_override(item)
        node = cfg
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                where = ".".join(path[: i + 1])
                raise CnnvitError(f"bad override {item!r}: {where} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return cfg


def _error_message(err: jsonschema.ValidationError, source: str) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join((f"{where}.{k}" if err.absolute_path else k) for k in extra)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key {keys}: remove or rename it{hint}"
    return f"{source}: {where}: {err.message}: fix this value"


def validate(cfg: dict, source: str = "params.yaml") -> None:
    """Schema check, then the cross-references the schema cannot express."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        raise CnnvitError(_error_message(errors[0], source))
    if not (cfg["data"].get("md5") or cfg["data"].get("sha256")):
        raise CnnvitError(f"{source}: data: no checksum: set data.sha256 (or data.md5)")
    if cfg["profile"] not in cfg["profiles"]:
        known = ", ".join(sorted(cfg["profiles"]))
        raise CnnvitError(f"{source}: profile: unknown profile {cfg['profile']!r}; use one of {known}")
    for recipe in cfg["runs"]["recipes"]:
        if recipe not in cfg["recipes"]:
            known = ", ".join(sorted(cfg["recipes"]))
            raise CnnvitError(
                f"{source}: runs.recipes: unknown recipe {recipe!r}; define recipes.{recipe} "
                f"or use one of {known}"
            )
    for name, prof in cfg["profiles"].items():
        for model in cfg["runs"]["models"]:
            if model not in prof["models"]:
                known = ", ".join(sorted(prof["models"]))
                raise CnnvitError(
                    f"{source}: runs.models: unknown model {model!r} in profile {name!r}; "
                    f"define profiles.{name}.models.{model} or use one of {known}"
                )


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise CnnvitError(f"params file {path} not found: run from the project root or pass --params")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise CnnvitError(f"{path}: not valid YAML ({first}): fix the syntax") from None
    if not isinstance(cfg, dict):
        raise CnnvitError(f"{path}: expected a mapping at the top level")
    cfg = apply_overrides(cfg, overrides or [])
    validate(cfg, str(path))
    return cfg


def local_path(url: str) -> Path | None:
    """The filesystem path ``data.url`` names (file:// or a plain path), or None for a URL."""
    if url.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        return None
    return Path(url).expanduser()


def run_name(model: str, recipe: str, seed: int) -> str:
    return f"{model}-{recipe}-s{seed}"


def known_models(cfg: dict) -> list[str]:
    return sorted(cfg["profiles"][cfg["profile"]]["models"])


def run_config(cfg: dict, model: str, recipe: str, seed: int) -> dict:
    """The fully resolved config of one training run: everything the trainer reads."""
    prof = cfg["profiles"][cfg["profile"]]
    if model not in prof["models"]:
        raise CnnvitError(
            f"unknown model {model!r}; known models: {', '.join(known_models(cfg))} "
            f"(define profiles.{cfg['profile']}.models.{model} in params.yaml to add one)"
        )
    if recipe not in cfg["recipes"]:
        raise CnnvitError(f"unknown recipe {recipe!r}; known recipes: {', '.join(sorted(cfg['recipes']))}")
    return {
        "run": run_name(model, recipe, seed),
        "profile": cfg["profile"],
        "model_name": model,
        "model": copy.deepcopy(prof["models"][model]),
        "recipe_name": recipe,
        "recipe": copy.deepcopy(cfg["recipes"][recipe]),
        "epochs": prof["epochs"],
        "train_size": prof["train_size"],
        "test_size": prof["test_size"],
        "seed": seed,
        "train": copy.deepcopy(cfg["train"]),
    }


def runs(cfg: dict) -> list[tuple[str, str, int]]:
    r = cfg["runs"]
    return [(m, rc, s) for m in r["models"] for rc in r["recipes"] for s in r["seeds"]]


# Which params.yaml keys each stage reads. ``{profile}``, ``{model}`` and ``{recipe}`` are filled
# in per job; dvc.yaml writes the same list with ``${profile}``/``${item.*}`` interpolation.
STAGE_KEYS: dict[str, list[str]] = {
    "download": ["data.url", "data.md5", "data.sha256", "data.format"],
    "prepare": ["data.format", "data.expect_train", "data.expect_test"],
    "train": [
        "profile",
        "profiles.{profile}.train_size",
        "profiles.{profile}.test_size",
        "profiles.{profile}.epochs",
        "profiles.{profile}.models.{model}",
        "recipes.{recipe}",
        "train",
    ],
    "collect": ["profile", "runs"],
    "figures": ["profile"],
    "report": ["profile", "runs", "data", "train", "recipes", "profiles"],
}


def stage_param_keys(stage: str, **item: str) -> list[str]:
    return [k.format(**item) for k in STAGE_KEYS[stage]]


def get_key(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def stage_params(cfg: dict, stage: str, **item: str) -> dict:
    """The values a stage reads, keyed by dotted name (Snakemake's params trigger)."""
    item = {"profile": cfg["profile"], **item}
    return {k: get_key(cfg, k) for k in stage_param_keys(stage, **item)}


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(cfg, dict) or not cfg:
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def diff_overrides(base: dict, cfg: dict) -> list[str]:
    """``--set`` items that turn ``base`` into ``cfg`` (how Snakemake passes --config on)."""
    flat_base, flat_cfg = flatten(base), flatten(cfg)
    out = [f"{key}=null" for key in flat_base if key not in flat_cfg]
    for key, value in flat_cfg.items():
        if key not in flat_base or flat_base[key] != value:
            out.append(f"{key}={json.dumps(value, separators=(',', ':'))}")
    return out
