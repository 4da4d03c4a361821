"""Outputs made under other params than the current ones, read from their own records: stale to
Snakemake too.

    stale_jobs(params, batches)        # {"corrupt": "data/corrupted/test.npz was made with ...", ...}
    write_stamps(params, batches)      # at every Snakemake start: each job's stamp, an input of its rule

Snakemake knows the params a job ran with only from its metadata (``.snakemake/metadata``), which
a stage run by hand (``cnnvit train --set ...``) never writes and which is gone with
``.snakemake``. Such outputs looked up to date by their times, and the stage after them refused
them ("train it again", "run `cnnvit corrupt` again") while Snakemake never ran that stage. DVC
needs none of this: it hashes outputs against dvc.lock, so outputs replaced by hand, or with no
lock, are a change to it already.

Each stage whose outputs record the params they were made with has a reader here
(:data:`READERS`): the prepared data (``stats.json``), the corrupted set (its ``provenance``
member: the values of the params it read), each run (``summary.json``'s config, as ``cnnvit
collect`` checks it), each evaluation (``evaluation.json``'s settings), the cost table (its
models, the entry each was measured as, and its sizes) and the tables (``provenance.json``). The
params compared are those the stage declares it reads (``STAGE.params``, what Snakemake's params
trigger compares), or the run's identity. At every Snakemake start, in the main process,
:func:`write_stamps` writes each such job's stamp, an input of its rule (``made_with=...`` in the
generated rules):

- outputs that agree, or none yet: the stamp says so, with mtime 0 (never newer than an output);
- outputs made under other params: the stamp names the keys and when this was first seen, dated
  then: newer than the outputs and with content other than any Snakemake recorded, so the job runs
  again, and every job after it. Its reason reads "Updated input files: .snakemake/cnnvit/made-with/...": that file
  says why.

Nothing here imports torch: the Snakefile is parsed at every start.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnvit import paths
from cnnvit.config.types import resolves_to
from cnnvit.files import params_differ, write_failure, write_text

if TYPE_CHECKING:
    from cnnvit.batch import Batch
    from cnnvit.config.types import Params, RunSpec

STAMPS_DIR = ".snakemake/cnnvit/made-with"
AGREE = "agree"  # a stamp's text when the outputs were made under the current params (or are not there)
SUMMARY, EVAL_RECORD = "summary.json", paths.EVAL_RECORD
NO_RECORD = "records no params it was made with (made by hand or by an older cnnvit)"


def stamp_path(stage: str, batch: str | None = None) -> str:
    return f"{STAMPS_DIR}/{stage}/{batch}.txt" if batch else f"{STAMPS_DIR}/{stage}.txt"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _member(path: Path, key: str) -> dict | None:
    """The mapping under ``key`` of the JSON record at ``path``; None where the record is missing,
    unreadable, or holds no such mapping."""
    record = _read_json(path)
    made = record.get(key) if isinstance(record, dict) else None
    return made if isinstance(made, dict) else None


def _declared(stage: str) -> tuple[str, ...]:
    from cnnvit.dag.stages import STAGES

    return STAGES[stage].params


def _tree_differs(stage: str, made: Any, params: Params) -> list[str]:
    """The keys ``stage`` reads on which the params tree ``made`` (as a record holds it, perhaps
    only its part) and the current params differ."""
    from cnnvit.config.values import values

    if not isinstance(made, dict):
        return [NO_RECORD]
    made = {"preset": params.raw.get("preset"), **made}
    keys = _declared(stage)
    return params_differ(values(made, keys), values(params.raw, keys))


def _say(path: str | Path, diff: list[str]) -> str | None:
    if not diff:
        return None
    if diff == [NO_RECORD]:
        return f"{path} {NO_RECORD}"
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    return f"{path} was made under other params ({'; '.join(diff[:3])}{more})"


# ----------------------------------------------------------------------------- a stage's records


def prepare(params: Params, root: Path) -> str | None:
    path = root / paths.PREPARED_DIR / "stats.json"
    if not path.exists():
        return None
    stats = _read_json(path)
    made = (stats.get("provenance") or {}).get("params") if isinstance(stats, dict) else None
    return _say(path, _tree_differs("prepare", made, params))


def corrupted_values(path: Path) -> Any:
    """The params values the corrupted set records (None: none, or unreadable), reading only that member."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["provenance"])).get("values") if "provenance" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, AttributeError, zipfile.BadZipFile):
        return None


def corrupt(params: Params, root: Path) -> str | None:
    from cnnvit.config.values import values

    path = root / paths.CORRUPTED
    if not path.exists():
        return None
    made = corrupted_values(path)
    if not isinstance(made, dict):
        return _say(path, [NO_RECORD])
    return _say(path, params_differ(made, values(params.raw, _declared("corrupt"))))


def cost(params: Params, root: Path) -> str | None:
    """cost.csv names its models with the entry each was measured as (``spec``) and its input sizes."""
    import csv

    path = root / paths.COST
    if not path.exists():
        return None
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        got = {r["model"]: json.loads(r["spec"]) for r in rows if r.get("spec")}
        sizes = {r["size"] for r in rows}
    except (OSError, KeyError, TypeError, ValueError, csv.Error, UnicodeDecodeError):
        return f"{path} is unreadable"
    if not rows or len(got) < len({r["model"] for r in rows}):
        return _say(path, [NO_RECORD])
    want = {m: params.active.models[m] for m in params.runs.models if m in params.active.models}
    diff = [f"models: {sorted(got)} -> {sorted(want)}"] if set(got) != set(want) else []
    diff += [
        f"presets.{params.preset}.models.{m}: {got[m]} -> {want[m]}"
        for m in sorted(want)
        if m in got and got[m] != want[m]
    ]
    if sizes != {str(s) for s in params.cost.sizes}:
        diff.append(f"cost.sizes: {sorted(sizes)} -> {sorted(str(s) for s in params.cost.sizes)}")
    return _say(path, diff)


def collect(params: Params, root: Path) -> str | None:
    path = root / paths.TABLES_DIR / "provenance.json"
    if not (root / paths.TABLES_DIR).exists():
        return None
    prov = _read_json(path)
    return _say(path, _tree_differs("collect", prov.get("params") if isinstance(prov, dict) else None, params))


def train(params: Params, root: Path, run: RunSpec) -> str | None:
    from cnnvit.config.recorded import run_config_differs
    from cnnvit.config.runs import run_config

    path = root / paths.RUNS_DIR / run.name / SUMMARY
    if not path.parent.exists():
        return None
    if (made := _member(path, "config")) is None:
        return _say(path, [NO_RECORD])
    return _say(path, run_config_differs(made, run_config(params, run).identity()))


def evaluate(params: Params, root: Path, run: RunSpec) -> str | None:
    """An evaluation records the model, test size, attention images, normalisation and precision
    it ran with (the weights, corrupted set and code are inputs: their times speak for them)."""
    from cnnvit.config.runs import run_config

    path = root / paths.EVAL_DIR / run.name / EVAL_RECORD
    if not path.parent.exists():
        return None
    if (made := _member(path, "settings")) is None:
        return _say(path, [NO_RECORD])
    cfg = run_config(params, run)
    want = {"model": json.loads(json.dumps(cfg.model.to_dict())), "test_size": cfg.test_size,
            "attention_images": params.active.attention_images, "normalize": cfg.recipe.normalize}  # fmt: skip
    got = {k: made.get(k) for k in want}
    diff = params_differ(got, want)
    if not resolves_to(params.runtime.precision, made.get("precision")):
        diff.append(f"runtime.precision: {made.get('precision')!r} -> {params.runtime.precision!r}")
    return _say(path, diff)


READERS: dict[str, Callable[..., str | None]] = {
    "prepare": prepare,
    "corrupt": corrupt,
    "train": train,
    "evaluate": evaluate,
    "cost": cost,
    "collect": collect,
}
PER_RUN = ("train", "evaluate")


def stale_jobs(params: Params, batches: Iterable[Batch], root: Path = Path(".")) -> dict[tuple[str, str | None], str]:
    """(stage, batch name or None) -> why its existing outputs are not the current params' own."""
    out: dict[tuple[str, str | None], str] = {}
    batches = list(batches)
    for stage, read in READERS.items():
        if stage not in PER_RUN:
            if why := read(params, root):
                out[(stage, None)] = why
            continue
        for batch in batches:
            whys = [w for run in batch.runs if (w := read(params, root, run))]
            if whys:
                out[(stage, batch.name)] = whys[0] + (f" (and {len(whys) - 1} more runs)" if len(whys) > 1 else "")
    return out


def write_stamps(params: Params, batches: Iterable[Batch], root: Path = Path(".")) -> dict[str, str]:
    """Each job's stamp (:func:`stamp_path`): ``agree``, dated 1970, or ``stale: <why>`` with the
    time it was first seen, dated then. A stale stamp already saying the same is left as it is: a
    job that ran and still disagrees is not run again and again, and the next disagreement (after
    an agreement) is new text. Returns path -> why, for the stale ones."""
    import datetime as dt

    batches = list(batches)
    stale = stale_jobs(params, batches, root)
    jobs = [(s, None) for s in READERS if s not in PER_RUN] + [(s, b.name) for s in PER_RUN for b in batches]
    out = {}
    for stage, batch in jobs:
        path = root / stamp_path(stage, batch)
        why = stale.get((stage, batch))
        try:
            current = path.read_text()
        except (OSError, UnicodeDecodeError):
            current = None
        if why:
            out[str(path)] = why
            if current is None or not current.startswith(f"stale: {why}\n"):
                write_text(path, f"stale: {why}\nseen: {dt.datetime.now(dt.UTC).isoformat()}\n")  # dated now
            continue
        if current != f"{AGREE}\n":
            write_text(path, f"{AGREE}\n")
        try:
            if path.stat().st_mtime != 0:
                os.utime(path, (0, 0))
        except OSError as exc:
            raise write_failure(path, exc) from None
    return out
