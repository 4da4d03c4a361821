"""The JSON schema of every arch's model entry, generated from its spec class's fields.

    schema_defs()      # the "$defs" of params.schema.json the spec classes decide (cnnvit schema)

A field's type is its schema (``int`` a positive integer, ``float`` a positive number, ``Literal``
an enum, ``tuple[int, ...]`` a non-empty list); ``same_length`` and ``divides`` add the rules JSON
Schema cannot say between two fields. The params loader reads the generated file alone, so that
loading params imports no model code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from cnnvit.models.registry import ARCHS, ArchSpec


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
