"""The package's shape: no import cycles, no import from a lower layer up to a higher one, and no
model named in code outside the model registry, the config and the paper module."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml
from conftest import ROOT

SRC = ROOT / "src"
# Bottom to top, as the README's "Code layout" names them. A module may import its own layer and
# the layers below; a module not listed here fails the test until it is given a layer.
LAYERS: list[tuple[str, ...]] = [
    ("cnnvit", "cnnvit.errors", "cnnvit.paths", "cnnvit.paper", "cnnvit.cifar", "cnnvit.code_identity", "cnnvit.stage"),
    ("cnnvit.files", "cnnvit.tables", "cnnvit.runfiles", "cnnvit.arguments", "cnnvit.progress"),
    ("cnnvit.models",),
    ("cnnvit.config",),
    ("cnnvit.training", "cnnvit.stats"),
    ("cnnvit.measure",),
    ("cnnvit.report", "cnnvit.batch", "cnnvit.plan"),
    ("cnnvit.stages",),
    ("cnnvit.dag",),
    ("cnnvit.cli",),
]
# Where a model may be named in code: the registry, the config and the paper module.
MAY_NAME_MODELS = ("cnnvit.models", "cnnvit.config", "cnnvit.paper")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted((SRC / "cnnvit").rglob("*.py"))}


def layer(module: str) -> int:
    best = max(
        (
            (i, prefix)
            for i, names in enumerate(LAYERS)
            for prefix in names
            if module == prefix or module.startswith(prefix + ".")
        ),
        key=lambda found: len(found[1]),
        default=None,
    )
    assert best is not None, f"{module} has no layer: add it to LAYERS (and to the README's Code layout)"
    return best[0]


def imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The cnnvit modules a module imports anywhere (lazy imports too; not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            children: list[ast.AST] = list(node.orelse)  # for the type checker only: no import at run time
        else:
            children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnvit"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found.update(subs or {node.module})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cnnvit"))
        for child in children:
            visit(child)

    visit(tree)
    return found


def test_no_import_runs_up_the_layers_or_in_a_circle():
    trees = modules()
    graph = {m: imported(t, set(trees)) - {m} for m, t in trees.items()}
    upward = sorted(
        f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, ds in graph.items() for d in ds if layer(d) > layer(m)
    )
    assert not upward, "imports up the layers:\n" + "\n".join(upward)
    seen: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(graph.get(m, ())):
            if seen.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(d) :], d]))
            if d not in seen:
                visit(d, [*path, d])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])


def test_the_layer_check_can_fail():
    assert layer("cnnvit.training.engine") < layer("cnnvit.dag.code")  # an engine importing the DAG is caught
    tree = ast.parse("from cnnvit.dag import code\nimport cnnvit.stages.train")
    assert imported(tree, {"cnnvit.dag.code"}) == {"cnnvit.dag.code", "cnnvit.stages.train"}


def strings(tree: ast.Module) -> list[tuple[int, str]]:
    """String constants in code, docstrings left out."""
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def test_no_model_is_named_outside_the_registry_the_config_and_the_paper():
    """Issue 29.4: what the paper says per model was keyed by name in five files."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = {m for p in params["presets"].values() for m in p["models"]}
    assert {"resnet50", "vit", "cnn_vit"} <= names
    found = [
        f"{m}:{line}: {text!r}"
        for m, tree in modules().items()
        if not m.startswith(MAY_NAME_MODELS)
        for line, text in strings(tree)
        if text in names
    ]
    assert not found, "models named outside models/, config/ and paper/:\n" + "\n".join(found)
