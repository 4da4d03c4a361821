"""Where every stage reads and writes, relative to the project root: the one list of paths.

:mod:`cnnvit.dag.stages` builds the DAG from these, and each stage command takes them as the
defaults of its path arguments. It is its own module so that a stage depends on these names,
not on the whole DAG description.
"""

RAW = "data/raw/cifar10.tar.gz"
PREPARED_DIR = "data/prepared"
PREPARED = tuple(f"{PREPARED_DIR}/{f}" for f in ("train.npz", "val.npz", "test.npz", "stats.json"))
RUNS_DIR = "results/runs"
CHECKPOINT_DIR = "results/checkpoints"
TABLES_DIR = "results/tables"
TABLES = tuple(
    f"{TABLES_DIR}/{name}"
    for name in (
        "epochs.csv",
        "runs.csv",
        "summary.csv",
        "claims.csv",
        "variants.csv",
        "datasize.csv",
        "datasize_pairs.csv",
        "per_class.csv",
        "confusion.csv",
        "robustness.csv",
        "robustness_detail.csv",
        "robustness_pairs.csv",
        "attention.csv",
        "cost.csv",
        "provenance.json",
        "metrics.json",
    )
)
METRICS = f"{TABLES_DIR}/metrics.json"  # for `dvc metrics show`: mean accuracies and every verdict
CORRUPTED = "data/corrupted/test.npz"  # CIFAR-10-C's corruptions of the runs' test images
EVAL_DIR = "results/eval"  # per run: the EVAL_FILES
EVAL_PER_IMAGE = "robustness_correct.npz"  # was each robustness image right, clean and corrupted
EVAL_RECORD = "evaluation.json"  # the run and the sha256 of the weights evaluated
EVAL_FILES = ("robustness.csv", "attention.csv", EVAL_PER_IMAGE, EVAL_RECORD)
COST = "results/cost/cost.csv"  # per model: latency, throughput, memory and FLOPs by input size
FIGURES_DIR = "results/figures"
TEMPLATE = "report/template.html.j2"
REPORT = "report/index.html"
