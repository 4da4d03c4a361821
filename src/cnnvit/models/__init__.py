"""The model registry: one spec class per architecture, its builder beside it, registered once.

    spec = spec_from_dict({"arch": "vit", "patch_size": 4, "embed_dim": 384, "depth": 12,
                           "num_heads": 6, "mlp_ratio": 4.0})
    model = build_model(spec)          # a timm network for 32x32 images and 10 classes
    schema_defs()                      # every arch's JSON schema, generated from the classes

Each family module (``resnet``, ``vit``, ``convnext``) holds frozen dataclasses whose fields are
exactly the keys a params.yaml model entry of that arch takes, and a ``build()`` that calls
``timm.create_model`` with every argument explicit. A field's type is its schema (``int`` a
positive integer, ``float`` a positive number, ``Literal`` an enum, ``tuple[int, ...]`` a non-empty
list), and ``cnnvit schema`` writes it into params.schema.json, where the params loader reads it
without importing the model code (so that only the stages that build models depend on it). A
test fails when the two disagree. Importing this package imports neither torch nor timm (the
builders import them when they run). Adding an arch: a module here with one ``@register`` class,
imported at the bottom of this file, then ``uv run cnnvit schema``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cnnvit.cifar import IMG_SIZE

if TYPE_CHECKING:
    import torch
    from torch import nn

ARCHS: dict[str, type[ArchSpec]] = {}


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """What every arch shares. Subclasses set the class attributes and define ``build``."""

    arch: ClassVar[str]
    display: ClassVar[str]  # the name tables and figures print
    convnet: ClassVar[bool]  # trains in channels_last memory format
    same_length: ClassVar[tuple[tuple[str, str], ...]] = ()  # list fields with one entry per stage
    # (a, b): a must divide b, a field or a number (the image side): a model that cannot be built
    # fails at validation, naming the keys, not as a traceback in timm
    divides: ClassVar[tuple[tuple[str, str | int], ...]] = ()
    pretrained: str | None = field(
        default=None,
        metadata={"doc": "a local .safetensors/.pth/.pt file or a timm hub name (hf-hub:timm/...); null = random init"},
    )

    def __post_init__(self) -> None:
        for a, b in self.same_length:
            if len(getattr(self, a)) != len(getattr(self, b)):
                raise ValueError(f"{a} and {b} must have the same length (one entry per stage)")

    def build(self, img_size: int = IMG_SIZE) -> nn.Module:
        """The timm network for ``img_size`` x ``img_size`` inputs and NUM_CLASSES classes."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the report's deviation table."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"arch": self.arch, **dataclasses.asdict(self)}


def register(cls: type[ArchSpec]) -> type[ArchSpec]:
    if cls.arch in ARCHS:
        raise TypeError(f"arch {cls.arch!r} is registered twice ({ARCHS[cls.arch].__name__}, {cls.__name__})")
    ARCHS[cls.arch] = cls
    return cls


# ----------------------------------------------------------------------------- schema from the classes


def _type_schema(tp: Any) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is int:
        return {"type": "integer", "minimum": 1}
    if tp is float:
        return {"type": "number", "exclusiveMinimum": 0}
    if tp is bool:
        return {"type": "boolean"}
    if tp is str:
        return {"type": "string", "minLength": 1}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _type_schema(args[0]), "minItems": 1}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        out = _type_schema(inner)
        return {**out, "type": [out["type"], "null"]}
    raise TypeError(f"no schema for field type {tp!r}")


def _same_length(a: str, b: str, longest: int = 8) -> list[dict]:
    """JSON Schema cannot compare two lists' lengths; one if/then per length can."""
    note = {"x-same-length": [a, b]}  # read by the loader's error message
    return [
        {
            "if": {"properties": {a: {"type": "array", "minItems": n, "maxItems": n}}, "required": [a]},
            "then": {"properties": {b: {"minItems": n, "maxItems": n, **note}}},
        }
        for n in range(1, longest + 1)
    ]


def _divides(a: str, b: str | int, largest: int = 64) -> list[dict]:
    """``a`` divides ``b``: an enum of the divisors when ``b`` is a number, else (JSON Schema cannot
    relate two fields) one if/then per value of ``a``."""
    note = {"x-divides": [a, b]}  # read by the loader's error message
    if isinstance(b, int):
        return [{"properties": {a: {"enum": [d for d in range(1, b + 1) if b % d == 0], **note}}}]
    return [
        {
            "if": {"properties": {a: {"const": n}}, "required": [a]},
            "then": {"properties": {b: {"multipleOf": n, **note}}},
        }
        for n in range(2, largest + 1)
    ]


def arch_schema(cls: type[ArchSpec]) -> dict:
    """The JSON schema of one arch's model entry, from its dataclass fields."""
    hints = typing.get_type_hints(cls)
    props: dict[str, dict] = {"arch": {"const": cls.arch}}
    required = ["arch"]
    for f in dataclasses.fields(cls):
        props[f.name] = _type_schema(hints[f.name]) | (
            {"description": f.metadata["doc"]} if "doc" in f.metadata else {}
        )
        if f.default is dataclasses.MISSING:
            required.append(f.name)
    out = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        "additionalProperties": False,
        "required": required,
        "properties": props,
    }
    rules = [rule for a, b in cls.same_length for rule in _same_length(a, b)]
    rules += [rule for a, b in cls.divides for rule in _divides(a, b)]
    if rules:
        out["allOf"] = rules
    return out


def schema_defs() -> dict[str, dict]:
    """The ``$defs`` of params.schema.json that the spec classes decide: ``model`` (which arch) and
    ``arch_<name>`` (its keys). ``cnnvit schema`` writes them there; a test checks they agree."""
    model = {
        "type": "object",
        "required": ["arch"],
        "properties": {"arch": {"enum": sorted(ARCHS)}},
        "allOf": [
            {
                "if": {"properties": {"arch": {"const": arch}}, "required": ["arch"]},
                "then": {"$ref": f"#/$defs/arch_{arch}"},
            }
            for arch in sorted(ARCHS)
        ],
    }
    return {"model": model} | {f"arch_{arch}": arch_schema(ARCHS[arch]) for arch in sorted(ARCHS)}


@functools.cache
def _spec(frozen: str) -> ArchSpec:
    entry = json.loads(frozen)
    cls: Any = ARCHS[entry["arch"]]  # a registered subclass, whose fields are the entry's keys
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "arch"})


def spec_from_dict(entry: dict) -> ArchSpec:
    """A checked model entry -> its arch's dataclass (lists become tuples)."""
    return _spec(json.dumps(entry, sort_keys=True))


# ----------------------------------------------------------------------------- building and measuring


def build_model(spec: ArchSpec) -> nn.Module:
    return spec.build()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, device: torch.device | str = "cpu", size: int = IMG_SIZE) -> int:
    """Forward FLOPs (2 per multiply-add) of one 3 x size x size image, from ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


# The families register themselves on import; they need the names above, so they come last.
from cnnvit.models import convnext, resnet, vit  # noqa: E402

__all__ = ["ARCHS", "ArchSpec", "build_model", "convnext", "count_params", "flops_per_image", "resnet", "vit"]
