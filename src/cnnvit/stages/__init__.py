"""The pipeline's stages, one module each, in the order they run: each module declares itself
(``STAGE = cnnvit.stage.Stage(...)``) beside its ``run()``.

    download -> prepare -> corrupt -> train -> evaluate (per run) -> cost -> collect -> figures -> report

A new stage is a module here with its ``STAGE``, ``add_args()`` and ``run()``, and its name in
:data:`NAMES`; then ``uv run cnnvit snakemake-rules`` and ``uv run cnnvit dvc-yaml`` write its
rule and its DVC stage. Nothing is imported here: the DAG reads this list without importing a
stage (:mod:`cnnvit.dag.declared`).
"""

NAMES = ("download", "prepare", "corrupt", "train", "evaluate", "cost", "collect", "figures", "report")
