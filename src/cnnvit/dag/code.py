"""Which source files can change a stage's results: what each tool re-runs a job for when it changes.

    stage_code(STAGES["collect"])                  # its import closure, less the infrastructure
    stage_code(STAGES["train"], "cnnvit.models.vit")   # what sets a ViT run's numbers, and nothing else
    arch_modules()                                  # {"vit": "cnnvit.models.vit", "resnet50": ...}

**Training** (``Stage.code == "training"``) depends on exactly the modules that set a run's numbers,
:func:`cnnvit.code_identity.training_modules` of its arch's module: the engine, the data path, the
schedule, the CIFAR subsets, the config types and their resolution, the registry and the run's own
arch module (the checkpoint records the same modules). A Snakemake job trains one model's seeds,
so it depends on that model's arch module only (``cnnvit.models.vit`` for ``vit`` and
``cnn_vit``); DVC's one train stage on every registered arch module.

**Every other stage** depends on its module's import closure (read from the source: lazy imports
inside functions too, not those under ``if TYPE_CHECKING:``; importing ``cnnvit.a.b`` runs
``cnnvit/__init__.py`` and ``cnnvit/a/__init__.py`` too; a module that reads files beside it names
them in ``PACKAGE_DATA``) less :data:`INFRASTRUCTURE`, code that decides whether and where a job
runs, or refuses it, but never what a number comes out as, and less what only the infrastructure
imports. The values a stage reads from params.yaml are its params, tracked by value; every key is
required there, so no default of config/types.py reaches a result. A per-run
stage (evaluate) builds one model per job: like training, it depends on its runs' arch module, not
on the others. Cutting the infrastructure out is what keeps a changed message in errors.py, a new
check of an argument or a better forecast from re-running every training in both tools; a
changed comment in a module that does count re-runs its jobs, and a training job then re-emits
its runs from their checkpoints, whose code identity ignores comments, docstrings and messages.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from cnnvit.code_identity import training_modules

if TYPE_CHECKING:
    from cnnvit.stage import Stage

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/cnnvit, wherever it is installed from
SRC = "src/cnnvit"  # how the files are named in the DAG: relative to the project root
# Modules (a package: every module in it) that cannot change a result, and why.
INFRASTRUCTURE: dict[str, str] = {
    "cnnvit.errors": "the error type and its messages: a message never changes a number",
    "cnnvit.arguments": "checks of command-line arguments: they refuse a value, never change one",
    "cnnvit.files": "atomic writes, checksums, provenance records and the check that tables match their params",
    "cnnvit.tables": "the checked reader of the tables stages hand on: it refuses a table or returns it as read",
    "cnnvit.paths": "where files are: the DAG names each file itself, so a moved file is a changed input",
    "cnnvit.batch": "which runs a command does, in how many processes: a run gives the same bits alone, "
    "in a batch or in a worker (tests/test_batch.py)",
    "cnnvit.plan": "the forecast printed before the work starts",
    "cnnvit.dag": "the DAG, its generators, the tool lock and the runs' status",
    "cnnvit.training.device": "picks and claims a device, names the precision: the resolved precision is part "
    "of a run's identity and of an evaluation's settings, so what it decides is tracked by value",
    "cnnvit.training.checkpoint": "whether a checkpoint can be reused; what it holds is the engine's",
    "cnnvit.training.hardware": "refuses a preset sized for a GPU on a machine without one",
    "cnnvit.config.load": "reads, checks and migrates params.yaml; the values (and the defaults of "
    "config/types.py, which counts) are each stage's params, tracked by value",
    "cnnvit.config.reading": "the YAML reader: it refuses a file or returns its tree",
    "cnnvit.config.checks": "cross-reference checks of params.yaml: they refuse, never change a value",
    "cnnvit.config.keys": "each key's description and bounds (the schema's): a bound refuses before anything runs",
    "cnnvit.config.schema": "writes params.schema.json (`cnnvit schema`)",
    "cnnvit.models.schema": "writes the models' part of params.schema.json",
    "cnnvit.cli": "the command line: which stage module runs",
    "cnnvit.code_identity": "which code counts for a result and its digests, compared by value where they are "
    "recorded (checkpoints, evaluation records)",
    "cnnvit.stage": "the declaration types",
    "cnnvit.stages": "the list of stages (the package's __init__; each stage module counts for its own stage)",
}


def module_file(module: str) -> Path | None:
    """The source file of ``cnnvit.x.y`` (``x/y.py`` or ``x/y/__init__.py``), or None."""
    if module != "cnnvit" and not module.startswith("cnnvit."):
        return None
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    if (base / "__init__.py").is_file():  # a package wins over a module of the same name, as for Python
        return base / "__init__.py"
    return base.with_suffix(".py") if base != PACKAGE_DIR and base.with_suffix(".py").is_file() else None


def _with_parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}


@cache
def _tree(module: str) -> ast.Module:
    path = module_file(module)
    if path is None:
        raise ValueError(f"no source for module {module}")
    return ast.parse(path.read_text())


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"
    )


def _walk(node: ast.AST):
    """ast.walk, without descending into ``if TYPE_CHECKING:`` blocks (their else branch runs)."""
    for child in ast.iter_child_nodes(node):
        if _type_checking(child):
            for other in child.orelse:  # type: ignore[attr-defined]
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


@cache
def imports(module: str) -> frozenset[str]:
    """The cnnvit modules (and their parent packages) that ``module`` imports anywhere in its body."""
    found: set[str] = set()
    for node in _walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module and module_file(node.module):
            found |= _with_parents(node.module)
            for alias in node.names:  # `from cnnvit.models import vit` imports the module cnnvit.models.vit
                if module_file(sub := f"{node.module}.{alias.name}"):
                    found |= _with_parents(sub)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if module_file(alias.name):
                    found |= _with_parents(alias.name)
    return frozenset(found)


def package_data(module: str) -> tuple[str, ...]:
    """The files ``module`` declares in ``PACKAGE_DATA``, relative to its own folder."""
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGE_DATA" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def closure(*modules: str, through=lambda module: True) -> set[str]:
    """Every module that importing ``modules`` imports, following only the imports of the modules
    ``through`` accepts."""
    todo, seen = [m for start in modules for m in _with_parents(start)], set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports(m) if through(m) else ())
    return seen


def result_modules(module: str) -> set[str]:
    """The modules of ``module``'s import closure that can change its results: the infrastructure
    is left out, and so is what only the infrastructure imports (it runs for the infrastructure)."""
    return {m for m in closure(module, through=lambda m: not infrastructure(m)) if not infrastructure(m)}


def relative(path: Path) -> str:
    return f"{SRC}/{path.relative_to(PACKAGE_DIR).as_posix()}"


def files_of(modules) -> tuple[str, ...]:
    """The source files (and package data) of ``modules``."""
    files = set()
    for m in modules:
        path = module_file(m)
        if path is None:
            raise ValueError(f"no source for module {m}")
        files.add(relative(path))
        files |= {relative(path.parent / name) for name in package_data(m)}
    return tuple(sorted(files))


def code_files(*modules: str) -> tuple[str, ...]:
    """The source files (and package data) that running ``modules`` executes or reads."""
    return files_of(closure(*modules))


def infrastructure(module: str) -> bool:
    return module in INFRASTRUCTURE or any(module.startswith(f"{m}.") for m in INFRASTRUCTURE if m != "cnnvit.stages")


@cache
def arch_modules() -> dict[str, str]:
    """Every registered arch and the module that defines it: the ``arch`` class attribute of each
    ``@register`` class in ``cnnvit/models/*.py``, read from the source (importing the registry
    imports every family)."""
    found = {}
    for path in sorted((PACKAGE_DIR / "models").glob("*.py")):
        module = f"cnnvit.models.{path.stem}"
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef) or not any(
                getattr(d, "id", None) == "register" for d in node.decorator_list
            ):
                continue
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == "arch" and item.value:
                    found[ast.literal_eval(item.value)] = module
    return found


def stage_code(stage: Stage, arch_module: str | None = None) -> tuple[str, ...]:
    """The source files whose change re-runs a job of ``stage``: for a per-run stage's job of one
    arch, that arch's module (``arch_module``) and no other; without one, every arch's."""
    archs = sorted(set(arch_modules().values()))
    mine = [arch_module] if arch_module else archs
    if stage.code == "training":
        return files_of({m for a in mine for m in training_modules(a)})
    modules = result_modules(stage.module)
    if stage.per_run:
        modules = (modules - set(archs)) | set(mine)
    return files_of(modules)
