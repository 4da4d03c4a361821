"""Which source files a piece of the pipeline runs: the import closure of its modules.

    code_files("cnnvit.stages.train")     # ("src/cnnvit/__init__.py", ..., "src/cnnvit/stages/train.py")

A module's imports of ``cnnvit.*`` are read from its source (lazy imports inside functions too,
but not those under ``if TYPE_CHECKING:``, which never run), followed transitively; importing
``cnnvit.a.b`` also runs ``cnnvit/__init__.py`` and ``cnnvit/a/__init__.py``, so those are in.
A module that reads files beside its source at run time names them in a module-level
``PACKAGE_DATA = ("file", ...)`` tuple, and they are in too.
This is what makes a code change re-run exactly the stages that run that code, in both tools,
and what a checkpoint records as the code that trained it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/cnnvit, wherever it is installed from
SRC = "src/cnnvit"  # how the files are named in the DAG: relative to the project root


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


def closure(*modules: str) -> set[str]:
    todo, seen = [m for start in modules for m in _with_parents(start)], set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports(m))
    return seen


def relative(path: Path) -> str:
    return f"{SRC}/{path.relative_to(PACKAGE_DIR).as_posix()}"


def code_files(*modules: str) -> tuple[str, ...]:
    """The source files (and package data) that running ``modules`` executes or reads."""
    files = set()
    for m in closure(*modules):
        path = module_file(m)
        assert path is not None
        files.add(relative(path))
        files |= {relative(path.parent / name) for name in package_data(m)}
    return tuple(sorted(files))
