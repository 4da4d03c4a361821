# What every rule needs: the typed params (validated by cnnvit.config.load, as every cnnvit
# command does, with Snakemake's --config overrides in them; its config files read again by it),
# the runs and their batches, and the helpers the generated rules (pipeline.smk, code.smk) call.
import shutil
import sys

from cnnvit.batch import batches, grouped
from cnnvit.config import values as V
from cnnvit.config.load import params_from_dict, read_params_file
from cnnvit.dag import snakemake as S
from cnnvit.dag.made_with import stamp_path, write_stamps
from cnnvit.dag.tool_lock import hold_for_snakemake
from cnnvit.errors import CnnvitError
from cnnvit.training.hardware import check_fits

# Snakemake reads params.yaml and every --configfile with its own YAML reader, which keeps the last
# of two equal keys without a word: each is read again through the project's reader, which refuses
# that as every cnnvit command does (and alias bombs, and files that are not params). Its config is
# then checked, alias bombs first, before anything walks it.
try:
    for path in workflow.configfiles:
        read_params_file(path)
    PARAMS = params_from_dict(config, "config")
except CnnvitError as exc:
    sys.exit(f"error: {exc}")
# The executor (local or SLURM) is known when the DAG is built, after this file is read: the GPU
# request is a callable, and the SLURM check runs when the workflow starts.
GPUS = lambda wildcards: S.gpu_request(PARAMS.runtime.device, workflow.local_exec)
# The GPU slots training jobs are scheduled onto, where no --resources gpu=N is given: the visible
# GPUs (of this machine, or of the SLURM allocation Snakemake runs in) x runtime.runs_per_gpu.
# Only on a machine with a GPU: without one, local jobs ask for none, and a cluster's jobs (the
# executor is not known yet while this file is read) must not be capped by the submit host's count.
if workflow.local_exec and S._resource(workflow, "gpu") is None:
    from cnnvit.training.device import slots

    if S.gpu_request(PARAMS.runtime.device, True):
        workflow.register_resource("gpu", slots(PARAMS.runtime))
RUNS = {run.name: run for run in PARAMS.all_runs()}
# A per-run stage's jobs: the seeds of a model x recipe x fraction together, or one run each
# (runtime.group_seeds; auto decides by the lanes that run at once, cnnvit.batch.grouped).
LANES = S.lanes(workflow, PARAMS)
GROUPED = grouped(PARAMS, LANES)
BATCHES = {batch.name: batch for batch in batches(PARAMS, LANES)}

# Outputs made under other params than these (by a stage run by hand, or with .snakemake gone, so
# that Snakemake has no record of theirs) are stale: each job's stamp, an input of its rule, says
# whether its outputs' own records agree (cnnvit.dag.made_with). Written here, before the DAG is
# built, by the main process only.
if workflow.is_main_process:
    try:
        for path, why in write_stamps(PARAMS, BATCHES.values()).items():
            print(f"cnnvit: {why}: its job runs again (see {path})", file=sys.stderr)
    except CnnvitError as exc:
        sys.exit(f"error: {exc}")

# The helpers of the generated rules.
# values("data.url", ...): the params a job reads ({preset} filled in), for the params trigger.
values = lambda *keys: V.values(PARAMS.raw, keys)
# batch_values(...): the same for a per-run job ({model}, {recipe} of its batch; fraction keys on a
# fraction of the training set).
batch_values = lambda *keys, fraction=(): (
    lambda w: V.values(PARAMS.raw, keys, BATCHES[w.batch], fraction)
)
# each_run("results/runs/{run}/x"): that file of every run of a {batch}.
each_run = lambda path: S.each_run(PARAMS, path, GROUPED)
# batch_code("train"): the code a per-run job runs: the rule's, and its batch's arch's.
batch_code = lambda stage: (
    lambda w: [*CODE[stage], *ARCH_CODE[stage][S.arch_of(PARAMS, BATCHES[w.batch])]]
)
# made_with("corrupt"), batch_made_with("train"): a job's stamp (above).
made_with = lambda stage: stamp_path(stage)
batch_made_with = lambda stage: lambda w: stamp_path(stage, w.batch)
# local_file("data.url"): the file itself as an input where the key names a local path.
local_file = lambda key: S.local_source(V.get_key(PARAMS.raw, key))


# In the main process only, before any job: refuse while DVC runs here, hold the project, write
# the validated config every job reads (cnnvit.dag.snakemake.PARAMS_SNAPSHOT), and print the
# forecast (`cnnvit plan`), which also refuses a precision or device this machine lacks.
onstart:
    if not workflow.local_exec and not shutil.which("sbatch"):
        sys.exit(
            "error: this profile submits jobs to SLURM, but sbatch is not on PATH: run it on a "
            "SLURM login node (or drop --workflow-profile workflow/profiles/slurm)"
        )
    try:
        hold_for_snakemake()
    except CnnvitError as exc:
        sys.exit(f"error: {exc}")
    try:  # a GPU-sized preset on a machine without a GPU (jobs run here): one line naming the laptop preset
        if workflow.local_exec:
            check_fits(PARAMS)
    except CnnvitError as exc:
        sys.exit(f"error: {exc}")
    S.write_snapshot(PARAMS)
    if why := S.print_plan(workflow, PARAMS):
        sys.exit(f"error: {why}")
