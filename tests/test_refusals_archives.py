"""Archives and folders prepare refuses, each in one line that names the member and the fix,
leaving nothing: damaged or incomplete archives, images that are not CIFAR-10's, a zip, two roots;
and hostile ones: unsafe members, a pickle that would run code, huge members and decompression
bombs (never read)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from conftest import (
    RunsCode,
    add_bytes,
    assert_one_line_error,
    make_cifar_python,
    make_imagefolder,
    md5,
    no_files,
    png_bytes,
    run_cli,
    synthetic_images,
    tar_directory,
    tiny_params,
)

from cnnvit.errors import CnnvitError
from cnnvit.stages.prepare import prepare

# ----------------------------------------------------------------------------- careless


def test_truncated_archive(tmp_path, cifar_archive, capsys):
    bad = tmp_path / "trunc.tar.gz"
    bad.write_bytes(cifar_archive.read_bytes()[: cifar_archive.stat().st_size // 2])
    params = tiny_params(str(bad), md5(bad))
    out = tmp_path / "prep"
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(bad), "--out-dir", str(out)], params)
    assert_one_line_error(code, err, "corrupt or truncated", "download")
    assert no_files(out)


def test_missing_batch(tmp_path, capsys):
    bad = make_cifar_python(tmp_path / "nobatch.tar.gz", skip="data_batch_3")
    params = tiny_params(str(bad), md5(bad))
    out = tmp_path / "prep"
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(bad), "--out-dir", str(out)], params)
    assert_one_line_error(code, err, "data_batch_3")
    assert no_files(out)


def test_missing_class_folder(tmp_path):
    folder = make_imagefolder(tmp_path / "folder", skip_class="frog")
    with pytest.raises(CnnvitError, match="missing class folder test/frog"):
        prepare(folder, "imagefolder")


def test_an_empty_class_folder_is_named(tmp_path):
    folder = make_imagefolder(tmp_path / "folder")
    for p in (folder / "test/frog").iterdir():
        p.unlink()
    with pytest.raises(CnnvitError, match="class folder test/frog has no images"):
        prepare(folder, "imagefolder")
    archive = tar_directory(folder, tmp_path / "a.tar.gz")
    with pytest.raises(CnnvitError, match="class folder test/frog has no images"):
        prepare(archive, "imagefolder")


def test_image_not_32x32_rgb_is_named(tmp_path):
    folder = make_imagefolder(tmp_path / "folder")
    big = np.zeros((40, 40, 3), np.uint8)
    (folder / "train/cat/big.png").write_bytes(png_bytes(big))
    with pytest.raises(CnnvitError, match=r"train/cat/big\.png: image is 40x40 RGB"):
        prepare(folder, "imagefolder")
    (folder / "train/cat/big.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), "L"))
    with pytest.raises(CnnvitError, match=r"big\.png: image is 32x32 L, not 32x32 RGB"):
        prepare(folder, "imagefolder")
    (folder / "train/cat/big.png").unlink()
    (folder / "train/cat/fake.jpg").write_bytes(b"this is text, not a JPEG")
    with pytest.raises(CnnvitError) as exc:
        prepare(folder, "imagefolder")
    assert "train/cat/fake.jpg: not a readable image" in str(exc.value) and "BytesIO" not in str(exc.value)


def test_count_check(tmp_path, cifar_archive):
    with pytest.raises(CnnvitError, match="found 100 train images, expected 50000"):
        prepare(cifar_archive, "cifar10-python", 50000, 10000)


def test_unknown_format(tmp_path, cifar_archive, capsys):
    params = tiny_params(str(cifar_archive), md5(cifar_archive), fmt="cifar100")
    code, err = run_cli(
        tmp_path, capsys, ["prepare", "--raw", str(cifar_archive), "--out-dir", str(tmp_path / "p")], params
    )
    assert_one_line_error(code, err, "data.format", "cifar100")
    with pytest.raises(CnnvitError, match=r"unknown data\.format 'cifar100'"):
        prepare(cifar_archive, "cifar100")


def test_more_classes_than_the_models_take_fail_in_prepare(tmp_path, capsys):
    """Issue 9.6: an 11th class used to pass prepare and crash train with an IndexError."""
    folder = make_imagefolder(tmp_path / "folder")
    for split in ("train", "test"):
        (folder / split / "zebra").mkdir()
        (folder / split / "zebra/0.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    params = tiny_params(str(folder), "0" * 32, fmt="imagefolder")
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(folder), "--out-dir", str(tmp_path / "p")], params)
    assert_one_line_error(code, err, "11 classes", "built for CIFAR-10's 10")
    assert no_files(tmp_path / "p")


def test_a_zip_is_named_as_not_a_tar(tmp_path, capsys):
    z = tmp_path / "cifar.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("cifar-10-batches-py/batches.meta", b"x")
    code, err = run_cli(
        tmp_path, capsys, ["prepare", "--raw", str(z), "--out-dir", str(tmp_path / "p")], tiny_params(str(z), md5(z))
    )
    assert_one_line_error(code, err, "is a zip file, not a tar archive")
    text = tmp_path / "plain.tar.gz"
    text.write_bytes(b"hello, I am not an archive at all" * 10)
    with pytest.raises(CnnvitError, match="not a tar archive"):
        prepare(text, "cifar10-python")


def test_constant_images_are_refused(tmp_path, capsys):
    """Issue 9.7: all-constant images gave a ZeroDivisionError in training."""
    folder = make_imagefolder(tmp_path / "folder")
    for i, p in enumerate(sorted(folder.rglob("*.png"))):  # red constant; distinct images (no copies)
        image = synthetic_images(1, seed=i)[0][0]
        image[..., 0] = 7
        p.write_bytes(png_bytes(image))
    params = tiny_params(str(folder), "0" * 32, fmt="imagefolder")
    params["data"].update(expect_train=0, expect_test=0)
    code, err = run_cli(tmp_path, capsys, ["prepare", "--raw", str(folder), "--out-dir", str(tmp_path / "p")], params)
    assert_one_line_error(code, err, "same R value (std 0)", "fix data.url")
    assert no_files(tmp_path / "p")


def test_an_archive_with_two_roots_is_refused_not_merged(tmp_path):
    """Issue 28.9: two roots were merged, every image counted twice."""
    a = make_imagefolder(tmp_path / "src/a")
    make_imagefolder(tmp_path / "src/b")
    with pytest.raises(CnnvitError, match=r"2 dataset roots \(a/, b/\).*remove all but one"):
        prepare(tmp_path / "src", "imagefolder")
    archive = tmp_path / "two.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(a, arcname="cifar10")
        tar.add(a / "train", arcname="train")  # a second root at the top level
    with pytest.raises(CnnvitError, match=r"2 dataset roots \(the top level, cifar10/\)"):
        prepare(archive, "imagefolder")


# ----------------------------------------------------------------------------- hostile


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
        prepare(archive, "cifar10-python")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": RunsCode(marker), b"labels": []}, protocol=2)
    archive = make_cifar_python(tmp_path / "evil.tar.gz", extra={"data_batch_1": evil})
    with pytest.raises(CnnvitError, match=r"data_batch_1: refusing to unpickle .*forbidden global"):
        prepare(archive, "cifar10-python")
    assert not marker.exists()
    pickle.loads(evil)  # the same bytes do run code when unpickled naively
    assert marker.exists()


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
