"""Each stage declares exactly the params it reads: a tiny run of every stage, in pipeline order on
the fixture archive, reads its params through a recording proxy, and the keys it read are the keys
its ``STAGE`` declares (those of Snakemake's params trigger and dvc.yaml), at the declarations'
granularity: a read of ``recipes.paper.lr`` is covered by a declared ``recipes.{recipe}``, and a
declared key is used when something at or below it is read.

What is not a read here: ``params.raw``, the config as a record (provenance copied into outputs,
and the check that collect's tables were made with these params), and the settings of
:data:`cnnvit.files.HOW_IT_RAN` (threads, device, batch sizes: how a job runs, not what it
computes), which a stage may read without declaring. ``Params.runs`` is the active preset's runs
(``presets.<p>.runs`` over the top-level ``runs:``), which a declared ``runs.K`` means too. Each
declared output is found where the stage wrote it."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, make_cifar_python, md5, tiny_params

from cnnvit.batch import batches
from cnnvit.config.load import params_from_dict
from cnnvit.config.values import get_key
from cnnvit.dag.stages import STAGES
from cnnvit.files import HOW_IT_RAN
from cnnvit.stage import RUN, RUNS

pytestmark = pytest.mark.slow  # trains and evaluates 4 tiny runs: ~10 s


class Reads(set):
    """The dotted keys read, one per leaf (or per container read whole: iterated, dumped), and the
    keys whose presence was asked (``EXISTS`` + key)."""


EXISTS = "exists:"  # `name in mapping`: a read of whether that key is there, not of its value


def _wrap(value, path: str, reads: Reads):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _recording(value, path, reads)
    if isinstance(value, dict):
        return RecordingDict(value, path, reads)
    reads.add(path)
    return value


@functools.cache
def _recording_class(cls: type) -> type:
    """``cls`` with every field read recorded: an instance of it still is a ``cls`` (isinstance,
    dataclasses.asdict and replace work), frozen as ``cls`` is."""

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        fields = type(self).__dataclass_fields__
        if name not in fields or name == "raw":
            return value
        path, reads = object.__getattribute__(self, "_path"), object.__getattribute__(self, "_reads")
        return _wrap(value, f"{path}.{name}" if path else name, reads)

    return type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": __getattribute__})


def _recording(obj, path: str, reads: Reads):
    copy = object.__new__(_recording_class(type(obj)))
    copy.__dict__.update(obj.__dict__)
    object.__setattr__(copy, "_path", path)
    object.__setattr__(copy, "_reads", reads)
    return copy


class RecordingDict(dict):
    """A mapping of the config whose reads are recorded: an item by its key, the whole mapping
    when it is iterated, dumped or compared."""

    def __init__(self, data=(), path: str | None = None, reads: Reads | None = None):
        super().__init__(data)
        self._path, self._reads = path, reads

    def _key(self, key) -> str:
        return f"{self._path}.{key}"

    def _whole(self) -> None:
        if self._reads is not None:
            self._reads.add(self._path)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        return value if self._reads is None else _wrap(value, self._key(key), self._reads)

    def get(self, key, default=None):
        return self[key] if super().__contains__(key) else default

    def __contains__(self, key) -> bool:
        if self._reads is not None:
            self._reads.add(EXISTS + self._key(key))  # whether that one key is there
        return super().__contains__(key)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()

    def __len__(self) -> int:
        self._whole()
        return super().__len__()

    def __eq__(self, other) -> bool:
        self._whole()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


def recording(params, reads: Reads):
    return _recording(params, "", reads)


def covered(read: str, keys: list[str]) -> bool:
    """A read at or below a declared key; a key's presence where that key, or one below it, is declared."""
    if read.startswith(EXISTS):
        there = read.removeprefix(EXISTS)
        return any(k == there or k.startswith(f"{there}.") or there.startswith(f"{k}.") for k in keys)
    return any(read == k or read.startswith(f"{k}.") for k in keys)


def named_entries(key: str) -> bool:
    """A mapping of named entries (recipes, presets, a preset's models): a stage reads those it
    needs (the runs' models), which a declaration cannot name one by one for DVC's one job."""
    parts = key.split(".")
    return key in ("recipes", "presets") or (len(parts) == 3 and parts[0] == "presets" and parts[2] == "models")


def touched(key: str, reads: Reads) -> bool:
    return any(r == key or r.startswith(f"{key}.") for r in reads)


def unread(key: str, value, reads: Reads) -> list[str]:
    """The keys at or below ``key`` (``value`` in the raw params) that were not read: a declared key
    is read when it is read whole, or when every key below it is; in a mapping of named entries,
    an entry is the unit (a model entry, a recipe): those read from count, the others are not needed."""
    if key in reads or (isinstance(value, dict) and not value and touched(key, reads)):
        return []
    if not isinstance(value, dict) or not value:
        return [key]
    if named_entries(key):
        return [] if any(touched(f"{key}.{n}", reads) for n in value) else [key]
    return [k for name in value for k in unread(f"{key}.{name}", value[name], reads)]


def check(stage: str, reads: Reads, keys: list[str], raw: dict) -> None:
    undeclared = sorted(r for r in reads if not covered(r, keys) and not covered(r, list(HOW_IT_RAN)))
    missed = [k for key in keys for k in unread(key, get_key(raw, key), reads)]
    assert not undeclared and not missed, (
        f"stage {stage} reads {undeclared or 'nothing undeclared'} without declaring it, "
        f"and declares {missed or 'nothing unread'} without reading it"
    )


def declared_keys(stage: str, preset: str, batch=None) -> list[str]:
    s = STAGES[stage]
    run = batch.runs[0] if batch else None
    keys = [*s.params, *(s.fraction_params if run and run.fraction < 1 else ())]
    return [k.format(preset=preset, model=run.model if run else "", recipe=run.recipe if run else "") for k in keys]


def parsed(stage: str, runs: str = ""):
    """The stage's declared command, parsed by the stage's own parser (run in the project folder)."""
    import argparse

    parser = argparse.ArgumentParser()
    module = importlib.import_module(f"cnnvit.stages.{stage}")
    module.add_args(parser)
    return module, parser.parse_args(shlex.split(STAGES[stage].cmd.replace(RUNS, runs))[2:])


# How each per-run stage's job does one run: the stage's function for a run, as its run() calls it.
ONE_RUN = {
    "train": lambda m, run, p, a: m.train_one(run, p, a.data_dir, a.runs_dir, a.ckpt_dir, a.threads),
    "evaluate": lambda m, run, p, a: m.evaluate_one(run, p, a.data_dir, a.corrupted, a.runs_dir, a.out_dir),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("reads")
    shutil.copytree(ROOT / "report", d / "report", ignore=shutil.ignore_patterns("index.html"))  # the template
    archive = make_cifar_python(d / "cifar.tar.gz")
    raw = tiny_params(str(archive), md5(archive), epochs=1, models=["vit", "resnet50"], recipes=["paper"], seeds=[0])
    raw["runs"]["train_fractions"] = [0.5, 1.0]
    return d, params_from_dict(raw)


def test_every_stage_reads_exactly_the_params_it_declares(project, monkeypatch):
    folder, params = project
    monkeypatch.chdir(folder)  # the declared commands' paths are relative to the project
    checked = []
    for stage, s in STAGES.items():
        if s.per_run:
            assert stage in ONE_RUN, f"say in ONE_RUN how a job of per-run stage {stage} does one run"
            for batch in batches(params):
                module, args = parsed(stage, batch.args)
                reads = Reads()
                for run in batch.runs:
                    ONE_RUN[stage](module, run, recording(params, reads), args)
                keys = declared_keys(stage, params.preset, batch)
                check(f"{stage} ({batch.name})", reads, keys, params.raw)
                for run in batch.runs:
                    missing = [o.path for o in s.outs if not Path(o.path.replace(RUN, run.name)).exists()]
                    assert not missing, f"stage {stage} declares {missing}, which it did not write"
        else:
            module, args = parsed(stage)
            reads = Reads()
            module.run(args, recording(params, reads))
            check(stage, reads, declared_keys(stage, params.preset), params.raw)
            missing = [o.path for o in s.outs if not Path(o.path).exists()]
            assert not missing, f"stage {stage} declares {missing}, which it did not write"
        checked.append(stage)
    assert checked == list(STAGES)


def test_the_check_fails_naming_both_keys():
    raw = {"preset": "p", "robustness": {"seed": 0}, "recipes": {"paper": {"lr": 1e-3, "flip": False}}}
    reads = Reads({"recipes.paper.lr", "preset"})
    with pytest.raises(AssertionError, match=r"reads \['recipes.paper.lr'\].*declares \['robustness.seed'\]"):
        check("x", reads, ["preset", "robustness"], raw)
    with pytest.raises(AssertionError, match=r"declares \['recipes.paper.flip'\] without"):
        check("x", Reads({"recipes.paper.lr"}), ["recipes.paper"], raw)  # a declared key not read in full
    check("x", Reads({"recipes.paper.lr", "recipes.paper.flip", "runtime.threads"}), ["recipes.paper"], raw)
    check("x", Reads({"recipes.paper.lr"}), ["recipes"], raw)  # a recipe read from: the unit is the entry
    check("x", Reads({"recipes.paper", f"{EXISTS}recipes.paper"}), ["recipes"], raw)  # read whole
    raw["recipes"]["modern"] = {"lr": 1.0}  # an entry not read at all: the stage does not need it
    check("x", Reads({"recipes.paper.lr", "recipes.paper.flip"}), ["recipes"], raw)
    with pytest.raises(AssertionError, match=r"declares \['recipes'\] without"):
        check("x", Reads({"preset"}), ["preset", "recipes"], raw)
