# Helpers shared by the rules. The stage commands and their param keys come from cnnvit.config,
# the same source dvc.yaml is tested against.
import shlex
from pathlib import Path

import yaml

from cnnvit.config import diff_overrides, local_path, runs, run_name, stage_param_keys, stage_params
from cnnvit.config import validate as cnnvit_validate

# Cross-reference checks the JSON schema cannot express (unknown model in runs, ...).
cnnvit_validate(config, "config")

with open("params.yaml") as _f:
    PARAMS_FILE = yaml.safe_load(_f)

RUNS = [run_name(m, r, s) for m, r, s in runs(config)]
DATA = "data/prepared"
PREPARED = [f"{DATA}/train.npz", f"{DATA}/test.npz", f"{DATA}/stats.json"]
RAW = "data/raw/cifar10.tar.gz"


def cli_sets(stage, **item):
    """--set flags for the --config/--configfile overrides that this stage reads."""
    keys = stage_param_keys(stage, profile=config["profile"], **item)
    out = []
    for item_ in diff_overrides(PARAMS_FILE, config):
        key = item_.split("=", 1)[0]
        if any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys):
            out.append(f"--set {shlex.quote(item_)}")
    return " ".join(out)


def local_source():
    """The archive itself as an input when data.url is a local path (none for a URL)."""
    path = local_path(config["data"]["url"])
    return [str(path)] if path is not None and path.exists() else []
