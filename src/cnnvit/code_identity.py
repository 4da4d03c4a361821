"""Which code sets a run's numbers, and a digest of it that comments, docstrings and messages
do not move.

    modules = training_modules("cnnvit.models.vit")     # what a ViT run's numbers depend on
    digests(modules)                                    # {"cnnvit.training.engine": "3f1c...", ...}

A run's numbers are set by its config and data (recorded apart) and by this code: the optimizer
step, the epoch loop and the checkpoint format (:mod:`cnnvit.training.engine`), the data path
(:mod:`cnnvit.training.inputs`), the schedule and autocast (:mod:`cnnvit.training.numerics`), the
subsets of CIFAR-10 (:mod:`cnnvit.cifar`), the config's types and its resolution into a run
(:mod:`cnnvit.config.types`, :mod:`cnnvit.config.runs`), the model registry and pretrained loading
(:mod:`cnnvit.models`, :mod:`cnnvit.models.registry`, :mod:`cnnvit.models.pretrained`; not the
schema generator, :mod:`cnnvit.models.schema`) and the module of the run's own arch
(``cnnvit.models.vit`` for a ViT or the hybrid): an edit to ResNet's builder retrains the ResNet
runs and no other. Not in it: messages (errors.py), argument checks, file writing, the plan, the
report, the statistics, the cost measurements, the DAG, device claiming.

A module's digest is the sha256 of its syntax tree with what cannot change a number taken out:
comments (never in the tree), docstrings, type annotations, ``metadata=`` of dataclass fields,
and the text of raised errors, warnings and printed lines. Renaming a variable or changing an
operation changes it. The checkpoint records these digests and names the modules that changed
when it refuses a resume (:mod:`cnnvit.training.checkpoint`).
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

TRAINING = (
    "cnnvit.training.engine",
    "cnnvit.training.inputs",
    "cnnvit.training.numerics",
    "cnnvit.cifar",
    "cnnvit.config.types",
    "cnnvit.config.runs",
    "cnnvit.models",
    "cnnvit.models.registry",
    "cnnvit.models.pretrained",
)
TALKING = frozenset({"print", "warn", "warning", "info", "debug", "error", "write"})  # calls whose text is a message


def module_path(module: str) -> Path:
    """The source file of ``cnnvit.x.y``: ``x/y.py`` or ``x/y/__init__.py``."""
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    return base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")


def training_modules(arch_module: str) -> tuple[str, ...]:
    """The modules whose code sets the numbers of a run of the arch defined in ``arch_module``."""
    return (*TRAINING, arch_module)


class _Quiet(ast.NodeTransformer):
    """Drops what cannot change a number: docstrings, annotations, dataclass field metadata and
    the text of errors, warnings and printed lines."""

    def _strip_docstring(self, node):
        body: list = getattr(node, "body", None) or []
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    def visit_Module(self, node):
        return self.generic_visit(self._strip_docstring(node))

    def visit_FunctionDef(self, node):
        node.returns = None
        return self.generic_visit(self._strip_docstring(node))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        return self.generic_visit(self._strip_docstring(node))

    def visit_arg(self, node):
        node.annotation = None
        return node

    def visit_AnnAssign(self, node):
        node.annotation = ast.Constant(None)
        return self.generic_visit(node)

    def visit_Raise(self, node):
        return ast.Raise(exc=ast.Name("raised"), cause=None)

    def visit_Call(self, node):
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        if name in TALKING:
            return ast.Call(func=ast.Name(str(name)), args=[], keywords=[])
        node.keywords = [k for k in node.keywords if k.arg != "metadata"]
        return self.generic_visit(node)


@cache
def digest(module: str) -> str:
    """16 hex digits of ``module``'s syntax tree, quieted (see the module's docstring)."""
    tree = _Quiet().visit(ast.parse(module_path(module).read_text()))
    dump = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest()[:16]


def digests(modules: tuple[str, ...]) -> dict[str, str]:
    return {m: digest(m) for m in modules}
