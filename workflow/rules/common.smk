# What every rule needs: the typed params (validated by cnnvit.config.load, as every cnnvit
# command does), params.yaml as written (overrides of it go to the commands as --set), the runs,
# and the pipeline description the rules take their files, commands and params from.
import shutil
import sys

from cnnvit.config.load import (
    coerce_scalars,
    migrate,
    params_from_dict,
    read_params_file,
)
from cnnvit.dag import snakemake as S
from cnnvit.dag.paths import REPORT
from cnnvit.errors import CnnvitError

try:
    PARAMS = params_from_dict(config, "config")
    BASE = coerce_scalars(migrate(read_params_file("params.yaml"), "params.yaml"))
except CnnvitError as exc:
    sys.exit(f"error: {exc}")
RUNS = {run.name: run for run in PARAMS.all_runs()}
# The executor (local or SLURM) is known when the DAG is built, after this file is read: the GPU
# request is a callable, and the SLURM check runs when the workflow starts.
GPUS = lambda wildcards: S.gpu_request(PARAMS.runtime.device, workflow.local_exec)


onstart:
    if not workflow.local_exec and not shutil.which("sbatch"):
        sys.exit(
            "error: this profile submits jobs to SLURM, but sbatch is not on PATH: run it on a "
            "SLURM login node (or drop --workflow-profile workflow/profiles/slurm)"
        )
