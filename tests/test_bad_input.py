"""Careless and hostile input, round three: alias bombs, huge or bomb members, a trickling server,
a zero-byte checkpoint, interrupted stages, non-finite numbers, fractions that collide, a changed
config over a finished run, and what the two tools do when both run in one project."""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zlib

import pytest
from conftest import (
    ROOT,
    assert_one_line_error,
    make_cifar_python,
    make_imagefolder,
    md5,
    prepare_dir,
    run_cli,
    tar_directory,
    tiny_params,
    write_yaml,
)

from cnnvit.cli import main
from cnnvit.config.load import MAX_VALUES, load_params, schema
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.dag import stages as S
from cnnvit.errors import CnnvitError
from cnnvit.stages import download as dl
from cnnvit.stages.prepare import prepare
from cnnvit.training import engine as train

PARAMS = ROOT / "params.yaml"


# ----------------------------------------------------------------------------- params


def alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 10])
def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys, levels):
    bomb = tmp_path / "params.yaml"
    bomb.write_text(PARAMS.read_text() + alias_bomb(levels))
    start = time.perf_counter()
    assert main(["download", "--params", str(bomb)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300 and "alias bomb" in err and f"{MAX_VALUES:,}" in err
    assert time.perf_counter() - start < 5
    # in an override too
    assert main(["download", "--params", str(PARAMS), "--set", f"data.url={alias_bomb(levels)}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400 and "alias bomb" in err


def test_a_huge_value_in_an_error_is_cut_short(capsys):
    seeds = f"runs.seeds=[{', '.join(['7'] * 5000)}]"  # not unique: the message quotes all 5,000
    assert main(["download", "--params", str(PARAMS), "--set", seeds]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400 and "characters)" in err


def test_every_key_a_dvc_stage_reads_is_required_by_the_schema():
    """DVC stops at a params key missing from params.yaml: whatever a job reads must be required,
    so that a params file one tool accepts, the other does too (data.md5 was optional)."""
    params = load_params(PARAMS, ["runs.train_fractions=[0.5, 1.0]"])
    root = schema()

    def required(dotted: str) -> bool:
        node = root
        for part in dotted.split("."):
            node = resolve(node)
            if "properties" in node and part in node["properties"]:
                if part not in node.get("required", []):
                    return False
                node = node["properties"][part]
            elif isinstance(node.get("additionalProperties"), dict):  # a map: presets, recipes, models
                node = node["additionalProperties"]
            else:
                return False
        return True

    def resolve(node):
        return resolve(root["$defs"][node["$ref"].split("/")[-1]]) if "$ref" in node else node

    keys = {k for tool in ("snakemake", "dvc") for job in S.jobs(params, tool) for k in job.params}
    assert keys and all(required(k) for k in keys), sorted(k for k in keys if not required(k))


def test_fractions_that_train_the_same_images_are_refused():
    with pytest.raises(CnnvitError, match=r"0.5 and 0.5000001 both train the same 22,500 images"):
        load_params(PARAMS, ["runs.train_fractions=[0.5, 0.5000001, 1.0]"])
    with pytest.raises(CnnvitError, match=r"both train the same 1,250 images \(of 2,500\)"):
        load_params(PARAMS, ["preset=quick", "runs.train_fractions=[0.5, 0.50001]"])
    load_params(PARAMS, ["runs.train_fractions=[0.5, 0.51]"])  # different sizes are fine


# ----------------------------------------------------------------------------- archives and images


def test_a_huge_non_image_member_is_never_read(tmp_path, capsys):
    """A 3 GB all-zero README beside the images once peaked at 6.3 GB in prepare: it is now skipped
    unread (the gzip stream stays small on disk, so the test builds a 200 MB one)."""
    root = make_imagefolder(tmp_path / "if")
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
        info = tarfile.TarInfo("README")
        info.size = 200 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    code = (  # VmHWM: this process's own peak (ru_maxrss would include what it inherited from pytest's fork)
        "import re\n"
        "from cnnvit.stages.prepare import prepare\n"
        f"prepare({str(archive)!r}, 'imagefolder')\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)\n"
    )
    peak_mb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert peak_mb < 150, peak_mb  # far below the member's 200 MB


def test_a_huge_image_member_is_refused_unread(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    (root / "train/cat/huge.png").write_bytes(bytes(3 * 2**20))
    with pytest.raises(CnnvitError, match=r"huge.png is 3.0 MB, more than any file of a CIFAR-10 archive"):
        prepare(root, "imagefolder")
    archive = tar_directory(root, tmp_path / "a.tar.gz")
    with pytest.raises(CnnvitError, match=r"huge.png is 3.0 MB"):
        prepare(archive, "imagefolder")


def png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side pixels that compresses to a few kB."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(side)
    raw = zlib.compress(row * 64, 9)  # only the first rows: PIL refuses at the header, before decoding
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [30_000, 12_000])  # over PIL's error limit, and between its warning and error
def test_a_decompression_bomb_image_is_one_line(tmp_path, side):
    root = make_imagefolder(tmp_path / "if")
    (root / "test/dog/bomb.png").write_bytes(png_bomb(side))
    with pytest.raises(CnnvitError, match=r"bomb.png: a decompression bomb .*remove it or fix data.url"):
        prepare(root, "imagefolder")


# ----------------------------------------------------------------------------- download


class Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        for _ in range(200):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


def test_a_trickling_download_gives_up_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(dl, "STALL_WINDOW_S", 1.0)
    monkeypatch.setattr(dl, "PROGRESS_EVERY_S", 0.3)
    params = tiny_params(f"http://127.0.0.1:{server.server_address[1]}/c.tar.gz", "0" * 32)
    out = tmp_path / "raw/c.tar.gz"
    try:
        code, err = run_cli(tmp_path, capsys, ["download", "--out", str(out)], params)
    finally:
        server.shutdown()
    assert_one_line_error(code, err, "stalled", "under 10 kB/s", "mirror or a local copy")
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    archive = make_cifar_python(d / "c.tar.gz")
    return archive, prepare_dir(archive, d / "prepared")


def cfg(archive, epochs=1, **recipe):
    raw = tiny_params(str(archive), md5(archive), epochs=epochs)
    raw["recipes"]["paper"].update(recipe)
    return run_config(load_params_from(raw), RunSpec("vit", "paper", 0))


def load_params_from(raw):
    from cnnvit.config.load import params_from_dict

    return params_from_dict(raw)


def test_a_zero_byte_checkpoint_is_set_aside(prepared, tmp_path, capsys):
    archive, data = prepared
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/vit-paper-s0.pt").write_bytes(b"")
    train.train_run(cfg(archive), data, tmp_path / "out", tmp_path / "ckpt")
    out = capsys.readouterr().out
    assert "is unreadable (EOFError" in out and "starting fresh" in out
    assert list((tmp_path / "ckpt").glob("vit-paper-s0.pt.rejected-*"))


def test_more_epochs_of_a_constant_lr_continue_a_finished_run(prepared, tmp_path, capsys, monkeypatch):
    """Issue 19.10: epochs 1 -> 2 retrained from scratch over the finished checkpoint, and going
    back to 1 retrained again. A constant LR continues; the result is a 2-epoch run's."""
    archive, data = prepared
    one = train.train_run(cfg(archive, 1), data, tmp_path / "a", tmp_path / "ck")
    capsys.readouterr()
    two = train.train_run(cfg(archive, 2), data, tmp_path / "a", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "epochs: 1 -> 2" in out and "continues after epoch 1" in out and two.epochs == 2
    fresh = train.train_run(cfg(archive, 2), data, tmp_path / "b", tmp_path / "fresh")
    assert (two.final_test_acc, two.selected_test_acc) == (fresh.final_test_acc, fresh.selected_test_acc)
    assert one.epochs == 1 and json.loads((tmp_path / "a/summary.json").read_text())["epochs"] == 2


def test_a_changed_config_keeps_the_finished_checkpoint_and_finds_it_again(prepared, tmp_path, capsys, monkeypatch):
    archive, data = prepared
    linear = {"schedule": "linear"}  # the LR depends on the epochs: no continuing
    train.train_run(cfg(archive, 1, **linear), data, tmp_path / "a", tmp_path / "ck")
    capsys.readouterr()
    train.train_run(cfg(archive, 2, **linear), data, tmp_path / "a", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "was made with other params (epochs: 1 -> 2); kept it as" in out and "starting fresh" in out
    assert len(list((tmp_path / "ck").glob("vit-paper-s0@*.pt"))) == 1
    monkeypatch.setattr(train.Trainer, "train_epoch", lambda *a, **k: pytest.fail("retrained"))
    train.train_run(cfg(archive, 1, **linear), data, tmp_path / "a", tmp_path / "ck")
    out = capsys.readouterr().out
    assert "was kept for exactly these params, data and code: using it" in out and "finished; not retraining" in out


def test_non_finite_numbers_in_a_run_are_refused_naming_it(tmp_path, capsys):
    from test_stats import collect, fabricate

    fabricate(tmp_path)
    d = tmp_path / "results/runs/vit-paper-s1"
    (d / "metrics.csv").write_text("epoch,val_acc,test_acc\n1,20,inf\n2,30,31\n")
    code = collect(tmp_path)
    err = capsys.readouterr().err
    assert_one_line_error(code, err, "vit-paper-s1/metrics.csv: column test_acc, line 2: 'inf' is not a finite")
    (d / "metrics.csv").write_text("epoch,val_acc,test_acc\n1,20,21\n2,30,31\n")
    (d / "summary.json").write_text(
        json.dumps({"selected_test_acc": float("nan"), "final_test_acc": 1, "best_test_acc": 2})
    )
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "selected_test_acc is nan, not an accuracy")
    assert not (tmp_path / "tables").exists()


def test_a_run_that_explodes_is_flagged_as_diverged(prepared, tmp_path, monkeypatch):
    """A ResNet50 at lr=1000 ended at chance with a loss of 1.2e19 and was recorded as normal. The
    flag reads the validation split, never the test set (issue 25.10), and a run still at chance
    after one epoch is under-trained, not diverged (issue 28)."""
    from cnnvit.runfiles import diverged

    row = {"epoch": 5, "train_loss": 2.0, "train_acc": 40.0, "val_loss": 1.2e19, "test_loss": 1.9, "test_acc": 10.0}
    assert "validation loss 1.2e+19" in diverged([row], 10)
    chance = row | {"val_loss": 2.3, "train_acc": 10.0, "train_loss": 2.31}
    assert "still at chance" in diverged([chance], 10)
    assert diverged([chance | {"epoch": 1}], 10) is None  # one epoch at chance: slow, not diverged
    assert diverged([row | {"val_loss": 1.9, "test_loss": 1.2e19}], 10) is None  # the test set decides nothing
    archive, data = prepared
    real = train.Trainer.evaluate

    def exploded(self, split=None, bs=None):
        got = real(self, split, bs)
        return type(got)(1.2e19, 10.0, got.logits) if split is self.data.val else got

    monkeypatch.setattr(train.Trainer, "evaluate", exploded)
    s = train.train_run(cfg(archive, 1), data, tmp_path / "out", tmp_path / "ck")
    assert "validation loss 1.2e+19" in s.diverged
    assert json.loads((tmp_path / "out/summary.json").read_text())["diverged"] == s.diverged


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_no_temporary_files_and_no_traceback(prepared, tmp_path, sig):
    """Issue 19.7: SIGTERM left .tmp files and a mixed set of tables; SIGINT early gave a traceback."""
    archive, data = prepared
    params = write_yaml(tmp_path / "params.yaml", tiny_params(str(archive), md5(archive), epochs=200))
    argv = [sys.executable, "-m", "cnnvit.cli", "train", "--model", "vit", "--recipe", "paper"]
    argv += ["--params", str(params), "--data-dir", str(data), "--runs-dir", str(tmp_path / "out")]
    argv += ["--ckpt-dir", str(tmp_path / "ck")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " epoch 3/200 " in line:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().startswith("error: interrupted"), err
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers and not (tmp_path / "out/vit-paper-s0").exists()
    early = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # during the imports
    early.send_signal(signal.SIGINT)
    _, err = early.communicate(timeout=60)
    assert "Traceback" not in err and early.returncode in (130, -signal.SIGINT), err


def test_a_threads_count_below_one_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "vit", "--recipe", "paper", "--threads", "-1"])
    assert e.value.code == 2 and "-1 is less than 1" in capsys.readouterr().err


def test_run_from_elsewhere_names_the_missing_prepared_data(tmp_path, capsys):
    archive = make_cifar_python(tmp_path / "c.tar.gz")
    argv = ["train", "--model", "vit", "--recipe", "paper", "--data-dir", str(tmp_path / "nowhere")]
    code, err = run_cli(tmp_path, capsys, argv, tiny_params(str(archive), md5(archive)))
    assert_one_line_error(code, err, f"no prepared data at {tmp_path / 'nowhere'}", "run from the project root")


def test_outputs_keep_the_users_umask(prepared, tmp_path):
    from cnnvit.files import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "figs") as tmp:
            (tmp / "a.png").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "figs").stat().st_mode & 0o777 == 0o755


def test_a_stage_refuses_to_replace_a_folder_holding_files_it_did_not_write(tmp_path):
    from cnnvit.stages.prepare import carve_validation, write_prepared

    archive = make_cifar_python(tmp_path / "c.tar.gz")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(CnnvitError, match=r"holds files this stage did not write \(notes.txt\)"):
        write_prepared(carve_validation(prepare(archive, "cifar10-python"), 20, 0), tmp_path / "mine", {})
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"
