"""``cnnvit schema``: write the model part of params.schema.json from the spec classes.

    cnnvit schema            # rewrite $defs.model and $defs.arch_* in params.schema.json
    cnnvit schema --check    # exit 1 if they are not what the spec classes give

The params loader validates against the JSON file alone, so that loading params never imports the
model code; this keeps that file in step with :mod:`cnnvit.models` (CI runs ``--check``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from cnnvit.config.load import PACKAGE_DATA
from cnnvit.errors import CnnvitError
from cnnvit.models import schema_defs


def schema_path() -> Path:
    return Path(str(resources.files("cnnvit.config").joinpath(PACKAGE_DATA[0])))


def regenerated(current: dict) -> dict:
    defs = {k: v for k, v in current["$defs"].items() if k != "model" and not k.startswith("arch_")}
    return {**current, "$defs": defs | schema_defs()}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2) + "\n"


def add_args(p) -> None:
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs instead of writing it")


def run(args, params) -> None:
    from cnnvit.files import write_text

    path = schema_path()
    text = path.read_text()
    new = render(regenerated(json.loads(text)))
    if args.check:
        if new != text:
            raise CnnvitError(f"{path} is out of date with the model specs: run `uv run cnnvit schema`")
        print(f"{path.name} is up to date")
        return
    write_text(path, new)
    print(f"wrote {path}" + (" (unchanged)" if new == text else ""))
