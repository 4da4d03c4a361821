"""The data stages on fixture archives in the official formats, served from 127.0.0.1."""

from __future__ import annotations

import io
import os
import pickle
import socket
import tarfile

import numpy as np
import pytest
from conftest import (
    CLASSES,
    PER_BATCH,
    add_bytes,
    make_cifar_python,
    make_imagefolder,
    md5,
    png_bytes,
    sha256,
    synthetic_images,
    tar_directory,
    tiny_params,
    write_yaml,
)

from cnnvit import data
from cnnvit.cli import main
from cnnvit.errors import CnnvitError


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(data, "BACKOFF_S", 0.01)


def run_cli(tmp_path, capsys, argv, params: dict) -> tuple[int, str]:
    params_file = write_yaml(tmp_path / "params.yaml", params)
    code = main([*argv, "--params", str(params_file)])
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def no_partial_files(directory) -> bool:
    return not directory.exists() or not any(p.is_file() for p in directory.rglob("*"))


# ----------------------------------------------------------------------------- download


def test_download_over_http_verifies_and_skips_refetch(tmp_path, http_server, cifar_archive, capsys):
    www, base = http_server
    (www / "c.tar.gz").write_bytes(cifar_archive.read_bytes())
    out = tmp_path / "data/raw/cifar10.tar.gz"
    cfg = {"url": f"{base}/c.tar.gz", "md5": md5(cifar_archive), "format": "cifar10-python"}
    data.download(cfg, out)
    assert out.read_bytes() == cifar_archive.read_bytes()
    (www / "c.tar.gz").unlink()  # a second fetch would now 404: it must not happen
    data.download(cfg, out)
    assert "not fetching again" in capsys.readouterr().out


def test_download_by_sha256_from_file_url(tmp_path, cifar_archive):
    out = tmp_path / "raw.tar.gz"
    cfg = {"url": cifar_archive.as_uri(), "md5": None, "sha256": sha256(cifar_archive)}
    data.download(cfg, out)
    assert out.read_bytes() == cifar_archive.read_bytes()


def test_download_404(tmp_path, http_server, capsys):
    _, base = http_server
    params = tiny_params(f"{base}/missing.tar.gz", "0" * 32)
    code, err = run_cli(tmp_path, capsys, ["download", "--out", str(tmp_path / "d/x.tar.gz")], params)
    assert_one_line_error(code, err, "HTTP 404", "data.url")
    assert no_partial_files(tmp_path / "d")


def test_download_unreachable_host_retries_then_points_at_mirror(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = tiny_params(f"http://127.0.0.1:{port}/cifar.tar.gz", "0" * 32)
    code, err = run_cli(tmp_path, capsys, ["download", "--out", str(tmp_path / "d/x.tar.gz")], params)
    assert_one_line_error(code, err, "cannot reach 127.0.0.1", "mirror or a local copy")
    assert no_partial_files(tmp_path / "d")


def test_download_checksum_mismatch_shows_both(tmp_path, http_server, cifar_archive, capsys):
    www, base = http_server
    (www / "c.tar.gz").write_bytes(cifar_archive.read_bytes())
    params = tiny_params(f"{base}/c.tar.gz", "f" * 32)
    code, err = run_cli(tmp_path, capsys, ["download", "--out", str(tmp_path / "d/x.tar.gz")], params)
    assert_one_line_error(code, err, "checksum mismatch", "f" * 32, md5(cifar_archive))
    assert no_partial_files(tmp_path / "d")
    stale = tmp_path / "d/x.tar.gz"  # a corrupt leftover is not kept when the fetch fails again
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"corrupt")
    code, err = run_cli(tmp_path, capsys, ["download", "--out", str(stale)], params)
    assert code == 1 and not stale.exists()


def test_download_directory_source_is_packed_reproducibly(tmp_path):
    src = make_imagefolder(tmp_path / "folder")
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    data.download({"url": str(src), "md5": "0" * 32}, a)
    data.download({"url": str(src), "md5": "0" * 32}, b)
    assert a.read_bytes() == b.read_bytes()
    assert len(data.prepare(a, "imagefolder")["train"][1]) == 30


# ----------------------------------------------------------------------------- prepare


def test_prepare_official_format(tmp_path, cifar_archive):
    result = data.prepare(cifar_archive, "cifar10-python", 5 * PER_BATCH, PER_BATCH)
    x, y = result["train"]
    assert x.shape == (5 * PER_BATCH, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and result["classes"] == CLASSES
    expected, labels = synthetic_images(PER_BATCH, seed=0)  # data_batch_1, HWC as written
    assert np.array_equal(x[:PER_BATCH], expected) and np.array_equal(y[:PER_BATCH], labels)
    stats = data.write_prepared(result, tmp_path / "prep", {"data": {}})
    with np.load(tmp_path / "prep/train.npz") as z:
        assert np.array_equal(z["images"], x) and list(z["classes"]) == CLASSES
    assert np.allclose(stats["mean"], x.reshape(-1, 3).mean(0) / 255, atol=1e-5)
    assert np.allclose(stats["std"], (x.reshape(-1, 3) / 255).std(0), atol=1e-5)


def test_prepare_cli_end_to_end_is_deterministic(tmp_path, cifar_archive, capsys):
    params = tiny_params(str(cifar_archive), md5(cifar_archive))
    outs = []
    for name in ("a", "b"):
        code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(cifar_archive),
                                               "--out-dir", str(tmp_path / name)], params)  # fmt: skip
        assert code == 0, err
        outs.append((tmp_path / name / "train.npz").read_bytes())
    # provenance (with its timestamp) is stored inside; the arrays must match exactly
    za, zb = (np.load(io.BytesIO(o)) for o in outs)
    assert all(np.array_equal(za[k], zb[k]) for k in ("images", "labels", "classes"))


@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_prepare_imagefolder_archive_and_directory(tmp_path, prefix):
    folder = make_imagefolder(tmp_path / "folder")
    archive = tar_directory(folder, tmp_path / "if.tar.gz", prefix=prefix.rstrip("/"))
    from_dir = data.prepare(folder, "imagefolder", 30, 30)
    from_tar = data.prepare(archive, "imagefolder", 30, 30)
    assert from_dir["classes"] == CLASSES
    for split in ("train", "test"):
        assert np.array_equal(from_dir[split][0], from_tar[split][0])
        assert np.array_equal(from_dir[split][1], from_tar[split][1])


def test_truncated_archive(tmp_path, cifar_archive, capsys):
    bad = tmp_path / "trunc.tar.gz"
    bad.write_bytes(cifar_archive.read_bytes()[: cifar_archive.stat().st_size // 2])
    params = tiny_params(str(bad), md5(bad))
    out = tmp_path / "prep"
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(bad), "--out-dir", str(out)], params)
    assert_one_line_error(code, err, "corrupt or truncated", "download")
    assert no_partial_files(out)


def test_missing_batch(tmp_path, capsys):
    bad = make_cifar_python(tmp_path / "nobatch.tar.gz", skip="data_batch_3")
    params = tiny_params(str(bad), md5(bad))
    out = tmp_path / "prep"
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(bad), "--out-dir", str(out)], params)
    assert_one_line_error(code, err, "data_batch_3")
    assert no_partial_files(out)


def test_missing_class_folder(tmp_path):
    folder = make_imagefolder(tmp_path / "folder", skip_class="frog")
    with pytest.raises(CnnvitError, match="missing class folder test/frog"):
        data.prepare(folder, "imagefolder")


def test_image_not_32x32_rgb_is_named(tmp_path):
    folder = make_imagefolder(tmp_path / "folder")
    big = np.zeros((40, 40, 3), np.uint8)
    (folder / "train/cat/big.png").write_bytes(png_bytes(big))
    with pytest.raises(CnnvitError, match=r"train/cat/big\.png: image is 40x40 RGB"):
        data.prepare(folder, "imagefolder")
    (folder / "train/cat/big.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), "L"))
    with pytest.raises(CnnvitError, match=r"big\.png: image is 32x32 L, not 32x32 RGB"):
        data.prepare(folder, "imagefolder")


def test_count_check(tmp_path, cifar_archive):
    with pytest.raises(CnnvitError, match="found 100 train images, expected 50000"):
        data.prepare(cifar_archive, "cifar10-python", 50000, 10000)


def test_unknown_format(tmp_path, cifar_archive, capsys):
    params = tiny_params(str(cifar_archive), md5(cifar_archive), fmt="cifar100")
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(cifar_archive),
                                           "--out-dir", str(tmp_path / "p")], params)  # fmt: skip
    assert_one_line_error(code, err, "data.format", "cifar100")
    with pytest.raises(CnnvitError, match=r"unknown data\.format 'cifar100'"):
        data.prepare(cifar_archive, "cifar100")


# ----------------------------------------------------------------------------- security


def _tar_with(tmp_path, member: tarfile.TarInfo, blob: bytes = b"") -> os.PathLike:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-py/batches.meta", b"x")
        tar.addfile(member, io.BytesIO(blob) if blob else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "why"),
    [
        ("/etc/evil", tarfile.REGTYPE, "absolute path"),
        ("cifar-10-batches-py/../../evil", tarfile.REGTYPE, "'..' path"),
        ("cifar-10-batches-py/link", tarfile.SYMTYPE, "link"),
        ("cifar-10-batches-py/hard", tarfile.LNKTYPE, "link"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, name, kind, why):
    member = tarfile.TarInfo(name)
    member.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        member.linkname = "/etc/passwd"
    blob = b"data" if kind == tarfile.REGTYPE else b""
    member.size = len(blob)
    archive = _tar_with(tmp_path, member, blob)
    with pytest.raises(CnnvitError, match=f"unsafe member .*{why}"):
        data.prepare(archive, "cifar10-python")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


class _RunsCode:
    """Unpickling this calls os.system: what a hostile mirror would plant in a batch."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _RunsCode(marker), b"labels": []}, protocol=2)
    archive = make_cifar_python(tmp_path / "evil.tar.gz", extra={"data_batch_1": evil})
    with pytest.raises(CnnvitError, match=r"data_batch_1: refusing to unpickle .*forbidden global"):
        data.prepare(archive, "cifar10-python")
    assert not marker.exists()
    pickle.loads(evil)  # the same bytes do run code when unpickled naively
    assert marker.exists()
