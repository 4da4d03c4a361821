"""The stages' declarations, read from their modules' source without importing them.

    declared()              # {"download": Stage(...), ..., "report": Stage(...)}, in pipeline order
    declaration("train")    # one

Each stage module declares itself with a module-level ``STAGE = Stage(...)``
(:mod:`cnnvit.stage`). Importing the nine modules costs about 10 s (torch, pandas, matplotlib),
which the Snakefile (parsed at every Snakemake start, and again in every cluster job), ``cnnvit
--help`` and ``cnnvit dvc-yaml`` cannot pay. So the module is parsed (:mod:`ast`) and only the
``STAGE`` expression is evaluated, in a namespace of the declaration types (:mod:`cnnvit.stage`)
and the path constants of :mod:`cnnvit.paths` and :mod:`cnnvit.runfiles`, each bound under the
name the module imports it by (``from cnnvit import paths``, ``from cnnvit.runfiles import
RUN_FILES``), so the expression means what it means when the module is imported; a test holds
the two equal for every stage. A declaration that uses any other name is refused in one line.
The stage list and its order are :data:`cnnvit.stages.NAMES`.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

from cnnvit import stage as stage_types
from cnnvit.errors import CnnvitError
from cnnvit.stage import Stage
from cnnvit.stages import NAMES

PACKAGE_DIR = Path(__file__).resolve().parents[1]
STAGES_DIR = PACKAGE_DIR / "stages"
# The modules a declaration may take names from: the declaration types, and the modules of paths,
# whose constants are read from their source (cnnvit.runfiles imports numpy).
TYPES = "cnnvit.stage"
CONSTANTS = ("cnnvit.paths", "cnnvit.runfiles")
BUILTINS = {"tuple": tuple, "sorted": sorted, "len": len, "range": range, "zip": zip}


@cache
def constants(module: str) -> SimpleNamespace:
    """The module-level constants of ``module`` (strings and tuples of them, made of literals and
    earlier constants), from its source; the imported module's own where it is imported already."""
    if module in sys.modules:
        return SimpleNamespace(**vars(sys.modules[module]))
    found: dict = {}
    path = PACKAGE_DIR / f"{module.split('.', 1)[1]}.py"
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            value = eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": BUILTINS, **found})
        except Exception:  # not a constant (a call, a class): not a path
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                found[target.id] = value
            elif isinstance(target, ast.Tuple) and isinstance(value, tuple) and len(value) == len(target.elts):
                found |= {t.id: v for t, v in zip(target.elts, value, strict=True) if isinstance(t, ast.Name)}
    return SimpleNamespace(**found)


def _namespace(tree: ast.Module) -> dict:
    """The names the module imports from :data:`TYPES` and :data:`CONSTANTS`, bound as it binds them."""
    names: dict = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.module == TYPES:
            names |= {a.asname or a.name: getattr(stage_types, a.name) for a in node.names}
        elif node.module in CONSTANTS:
            values = vars(constants(node.module))
            names |= {a.asname or a.name: values[a.name] for a in node.names if a.name in values}
        elif node.module == "cnnvit":
            for a in node.names:
                if f"cnnvit.{a.name}" in CONSTANTS:
                    names[a.asname or a.name] = constants(f"cnnvit.{a.name}")
    return names


def _expression(tree: ast.Module, where: str) -> ast.expr:
    found: list[ast.expr] = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        if node.value is not None and any(getattr(t, "id", None) == "STAGE" for t in targets):
            found.append(node.value)
    if len(found) != 1:
        raise CnnvitError(
            f"{where} declares {'no' if not found else 'more than one'} module-level STAGE = Stage(...): "
            "declare the stage once, beside its run()"
        )
    return found[0]


@cache
def declaration(name: str) -> Stage:
    """The ``STAGE`` that ``cnnvit/stages/<name>.py`` declares, read from its source."""
    path = STAGES_DIR / f"{name}.py"
    where = f"src/cnnvit/stages/{name}.py"
    if not path.is_file():
        raise CnnvitError(f"stage {name} is listed in cnnvit.stages.NAMES but {where} does not exist")
    tree = ast.parse(path.read_text(), str(path))
    expr = _expression(tree, where)
    scope = {"__builtins__": BUILTINS, **_namespace(tree)}
    try:
        stage = eval(compile(ast.Expression(expr), str(path), "eval"), scope)  # only the declaration
    except NameError as exc:
        raise CnnvitError(
            f"the STAGE of {where} uses {exc.name!r}, which the DAG cannot read without importing the module: "
            f"use only {', '.join(stage_types.__all__)}, literals and the names of cnnvit.paths and cnnvit.runfiles"
        ) from None
    if not isinstance(stage, Stage) or stage.name != name:
        got = f"a Stage named {stage.name!r}" if isinstance(stage, Stage) else f"a {type(stage).__name__}"
        raise CnnvitError(f"the STAGE of {where} is {got}: declare Stage(name={name!r}, ...)")
    return stage


def declared() -> dict[str, Stage]:
    """Every stage, in the order the pipeline runs them."""
    return {name: declaration(name) for name in NAMES}
