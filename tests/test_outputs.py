"""Where outputs go and how they are read back (issue 28.14 and smaller items): an output folder
reached through a link is written where the link points; a stage never replaces a folder holding
files it did not write, and keeps the user's umask; what a killed write left is swept once its
process is gone; a JSON nested past the recursion limit and tables with missing columns, wrong
types or non-finite values are one line naming the file (cnnvit.tables); a file where a folder
belongs, or a folder where a file does, is refused in one line and kept; a command's lines reach a
log shared with other jobs whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import make_cifar_python

from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_dir, atomic_path, read_json, sweep_stale, write_text
from cnnvit.stages.prepare import prepare
from cnnvit.tables import read_table

# ----------------------------------------------------------------------------- links


def test_a_linked_output_folder_is_written_through_and_the_link_kept(tmp_path):
    """A results/tables linked to another disk became a real folder, leaving the link dangling."""
    disk = tmp_path / "other-disk/tables"
    disk.mkdir(parents=True)
    (disk / "old.csv").write_text("old")
    (tmp_path / "results").mkdir()
    link = tmp_path / "results/tables"
    link.symlink_to(disk)
    with atomic_dir(link, owned=lambda name: name.endswith(".csv")) as tmp:
        (tmp / "new.csv").write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(disk)
    assert sorted(p.name for p in disk.iterdir()) == ["new.csv"]
    assert not [p for p in disk.parent.iterdir() if p.name.startswith(".")]  # no temporary left there


def test_a_linked_run_folder_and_a_dangling_link_are_written_through(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/vit-paper-s0").symlink_to(tmp_path / "scratch/vit-paper-s0")  # not made yet
    with atomic_dir(tmp_path / "runs/vit-paper-s0") as tmp:
        (tmp / "summary.json").write_text("{}")
    assert (tmp_path / "scratch/vit-paper-s0/summary.json").read_text() == "{}"
    assert (tmp_path / "runs/vit-paper-s0").is_symlink()


def test_a_linked_file_is_replaced_not_written_through(tmp_path):
    """DVC links outputs into its cache (cache.type symlink): writing through would change the cache."""
    cache = tmp_path / "cache-entry"
    cache.write_text("cached")
    (tmp_path / "out.csv").symlink_to(cache)
    write_text(tmp_path / "out.csv", "new")
    assert cache.read_text() == "cached" and not (tmp_path / "out.csv").is_symlink()


def test_snakemakes_timestamp_in_an_output_folder_is_neither_refused_nor_carried(tmp_path):
    """Issue 28.5: after Snakemake, `dvc repro` failed: "results/figures holds files this stage did
    not write (.snakemake_timestamp)"."""
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures/.snakemake_timestamp").write_text("")
    (tmp_path / "figures/.gitignore").write_text("/x\n")
    with atomic_dir(tmp_path / "figures", owned=lambda name: name.endswith(".png")) as tmp:
        (tmp / "a.png").write_bytes(b"png")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [".gitignore", "a.png"]


# ----------------------------------------------------------------------------- what a stage may replace


def test_a_stage_refuses_to_replace_a_folder_holding_files_it_did_not_write(tmp_path):
    from cnnvit.stages.prepare import carve_validation, write_prepared

    archive = make_cifar_python(tmp_path / "c.tar.gz")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(CnnvitError, match=r"holds files this stage did not write \(notes.txt\)"):
        write_prepared(carve_validation(prepare(archive, "cifar10-python"), 20, 0), tmp_path / "mine", {})
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


def test_outputs_keep_the_users_umask(tmp_path):
    from cnnvit.files import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "figs") as tmp:
            (tmp / "a.png").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "figs").stat().st_mode & 0o777 == 0o755


# ----------------------------------------------------------------------------- what a killed write leaves


def killed_while_writing(tmp_path, kind: str) -> None:
    """A process killed (SIGKILL) inside atomic_dir or atomic_path for tmp_path/figures."""
    code = (
        "import os, signal, sys\n"
        "from cnnvit.files import atomic_dir, atomic_path\n"
        f"ctx = atomic_{kind}({str(tmp_path / 'figures')!r})\n"
        "with ctx as tmp:\n"
        "    (tmp / 'half.png').write_bytes(b'x') if tmp.is_dir() else tmp.write_bytes(b'x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["dir", "path"])
def test_what_a_killed_write_left_is_swept_by_the_next_write(tmp_path, kind):
    """SIGKILL during figures left .figures.*/ with partial images that nothing swept."""
    killed_while_writing(tmp_path, kind)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".figures.")]
    assert len(left) == 1
    with atomic_dir(tmp_path / "figures") if kind == "dir" else atomic_path(tmp_path / "figures") as tmp:
        (tmp / "a.png").write_bytes(b"png") if kind == "dir" else tmp.write_bytes(b"done")
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]


def test_a_live_writers_temporaries_and_foreign_names_are_left_alone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from cnnvit.files import _HOST

        ours = tmp_path / f".figures.{live.pid}@{_HOST}.abc123"
        other_host = tmp_path / ".figures.1@elsewhere.abc123"
        legacy = tmp_path / ".figures.abc123"  # made before temporaries were named by their process
        for p in (ours, other_host, legacy):
            p.mkdir()
        assert sweep_stale(tmp_path / "figures") == []
        assert ours.exists() and other_host.exists() and legacy.exists()
    finally:
        live.kill()
        live.wait()
    assert sweep_stale(tmp_path / "figures") == [ours]


def test_a_write_killed_between_its_two_renames_gets_its_previous_version_back(tmp_path):
    from cnnvit.files import _HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = tmp_path / f".tables.{dead.stdout.strip()}@{_HOST}.old"
    old.mkdir()
    (old / "summary.csv").write_text("previous")
    sweep_stale(tmp_path / "tables")
    assert (tmp_path / "tables/summary.csv").read_text() == "previous" and not old.exists()


# ----------------------------------------------------------------------------- something else in the way


@pytest.mark.parametrize("write", ["text", "dir"])
def test_a_file_where_a_folder_belongs_is_one_line_naming_it_and_is_kept(tmp_path, write):
    """A file where an output's folder belongs (results/, .snakemake/cnnvit/made-with): the write
    is refused in one line naming that file, which is left as it was."""
    (tmp_path / "results").write_text("mine")
    target = tmp_path / "results/tables/summary.csv"
    with pytest.raises(CnnvitError, match=rf"{tmp_path / 'results'} is a file, where a folder belongs: move it away"):
        if write == "text":
            write_text(target, "x")
        else:
            with atomic_dir(target.parent):
                pass
    assert (tmp_path / "results").read_text() == "mine" and os.listdir(tmp_path) == ["results"]


def test_a_folder_where_a_file_belongs_is_refused_not_replaced(tmp_path):
    (tmp_path / "summary.csv").mkdir()
    (tmp_path / "summary.csv/notes.txt").write_text("mine")
    with pytest.raises(CnnvitError, match=r"summary.csv: it is a folder, where a file belongs: move it away"):
        write_text(tmp_path / "summary.csv", "x")
    assert (tmp_path / "summary.csv/notes.txt").read_text() == "mine" and os.listdir(tmp_path) == ["summary.csv"]


def test_a_file_where_an_output_folder_belongs_is_refused_not_moved_aside(tmp_path):
    """Moved aside, it would have been swept as a killed write's leftover once this process ended."""
    (tmp_path / "figures").write_text("mine")
    refused = pytest.raises(CnnvitError, match=r"figures: it is a file, where a folder belongs: move it away")
    with refused, atomic_dir(tmp_path / "figures"):
        pass
    assert (tmp_path / "figures").read_text() == "mine" and os.listdir(tmp_path) == ["figures"]


def test_snakemakes_state_blocked_by_a_file_or_folder_is_one_line(tmp_path):
    """The Snakefile's own writes at its start (the made-with stamps, the project lock)."""
    from conftest import tiny_params

    from cnnvit.batch import batches
    from cnnvit.config.load import params_from_dict
    from cnnvit.dag.made_with import write_stamps
    from cnnvit.dag.tool_lock import hold_for_snakemake

    cfg = tiny_params("data/raw.tar.gz", "0" * 32, models=["vit", "resnet50"], recipes=["paper"], seeds=[0])
    params = params_from_dict(cfg, "test")
    (tmp_path / ".snakemake/cnnvit").mkdir(parents=True)
    (tmp_path / ".snakemake/cnnvit/made-with").write_text("mine")
    with pytest.raises(CnnvitError, match=r"made-with is a file, where a folder belongs: move it away"):
        write_stamps(params, batches(params, lanes=1), tmp_path)
    (tmp_path / ".snakemake/cnnvit.lock").mkdir()
    with pytest.raises(CnnvitError, match=r"cnnvit.lock: it is a folder, where a file belongs: move it away"):
        hold_for_snakemake(tmp_path)
    assert (tmp_path / ".snakemake/cnnvit/made-with").read_text() == "mine"


def test_a_folder_where_a_runs_lock_belongs_is_one_line(tmp_path):
    from cnnvit.training.checkpoint import run_lock

    (tmp_path / "vit-paper-s0.lock").mkdir()
    refused = pytest.raises(CnnvitError, match=r"vit-paper-s0.lock: it is a folder, where a file belongs")
    with refused, run_lock(tmp_path, "vit-paper-s0"):
        pass


def test_a_commands_lines_reach_a_shared_log_whole():
    """Under PYTHONUNBUFFERED (Snakemake's jobs), print() writes a line's text and its newline
    apart, so two jobs' lines ran together in one log; `cnnvit` writes each line at once."""
    import io

    from cnnvit.cli import whole_lines

    class Recorder(io.RawIOBase):
        def __init__(self):
            self.chunks: list[bytes] = []

        def writable(self):
            return True

        def write(self, b):
            self.chunks.append(bytes(b))
            return len(b)

    raw = Recorder()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # as python -u makes stdout
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = stream
    try:
        whole_lines()
        print("epoch 3/6 done", "val 61.2%")
        print("error: x", file=sys.stderr)
    finally:
        sys.stdout, sys.stderr = saved
    assert raw.chunks == [b"epoch 3/6 done val 61.2%\n", b"error: x\n"]


# ----------------------------------------------------------------------------- reading back


def test_a_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CnnvitError, match=r"summary.json is nested too deeply .*: train it again"):
        read_json(path, "train it again")
    path.unlink()
    path.mkdir()
    with pytest.raises(CnnvitError, match=r"cannot read .*summary.json \(Is a directory\)"):
        read_json(path)


COLUMNS = {"model": "str", "severity": "int", "acc": "float", "latency": "float?", "ok": "bool"}

GOOD = "model,severity,acc,latency,ok\nvit,1,51.5,2.5,True\nvit,2,40.0,,False\n"


def table(tmp_path, text: str | bytes, **kw):
    path = tmp_path / "t.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return read_table(path, COLUMNS, fix="run `cnnvit evaluate` again", **kw)


def test_a_good_table_is_read_with_its_types(tmp_path):
    df = table(tmp_path, GOOD)
    assert list(df.severity) == [1, 2] and df.severity.dtype == "int64" and list(df.ok) == [True, False]
    assert df.acc.dtype == float and df.latency.isna().tolist() == [False, True]


@pytest.mark.parametrize(
    "text, needle",
    [
        (GOOD.replace("51.5", "inf"), "column acc, line 2: 'inf' is not a finite number"),
        (GOOD.replace("51.5", "nan"), "column acc, line 2: 'nan' is not a finite number"),
        (GOOD.replace("2.5", "-inf"), "column latency, line 2: '-inf' is not a finite number"),
        (GOOD.replace("40.0", ""), "column acc, line 3: '' is empty"),
        (GOOD.replace("51.5", "high"), "column acc, line 2: 'high' is not a number"),
        (GOOD.replace(",1,", ",1.5,"), "column severity, line 2: '1.5' is not a whole number"),
        (GOOD.replace("True", "yes"), "column ok, line 2: 'yes' is not True or False"),
        (GOOD.replace("vit,2", ",2"), "column model, line 3: '' is empty"),
        (GOOD.replace("acc,", "accuracy,"), "has no column acc (it has model, severity, accuracy"),
        (GOOD.splitlines()[0] + "\n", "has only a header"),
        ("", "is empty (not even a header)"),
        (b"\xff\xfe\x00\x01garbage", "is not a readable CSV table"),
        ('model,severity\n"vit,1\n', "is not a readable CSV table"),
    ],
    ids=[
        "inf", "nan", "neg-inf", "empty", "text", "fraction", "bool", "no-name", "no-column", "header", "zero-bytes",
        "binary", "unclosed-quote",
    ],
)  # fmt: skip
def test_a_bad_table_is_one_line_naming_file_column_and_line(tmp_path, text, needle):
    """Issue 28.4's class: NaN/inf reached the tables, a missing column gave all-NaN rows, a
    header-only table dropped a seed, a malformed table was a traceback."""
    with pytest.raises(CnnvitError) as e:
        table(tmp_path, text)
    line = str(e.value)
    assert "\n" not in line and str(tmp_path / "t.csv") in line and needle in line, line
    assert line.endswith("run `cnnvit evaluate` again")


def test_a_missing_table_names_what_makes_it(tmp_path):
    with pytest.raises(CnnvitError, match=r"t.csv not found: run `cnnvit cost` first"):
        read_table(tmp_path / "t.csv", {"a": "str"}, fix="x", missing="run `cnnvit cost` first")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(CnnvitError, match=r"d.csv is a folder, not a table: x"):
        read_table(tmp_path / "d.csv", {"a": "str"}, fix="x")
