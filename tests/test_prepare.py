"""The prepare stage on fixture archives in the official formats, and on hostile or careless ones."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import (
    CLASSES,
    PER_BATCH,
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
from cnnvit.stages.prepare import carve_validation, prepare, write_prepared

# ----------------------------------------------------------------------------- prepare


def test_prepare_official_format(tmp_path, cifar_archive):
    result = prepare(cifar_archive, "cifar10-python", 5 * PER_BATCH, PER_BATCH)
    x, y = result["train"]
    assert x.shape == (5 * PER_BATCH, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and result["classes"] == CLASSES
    expected, labels = synthetic_images(PER_BATCH, seed=0)  # data_batch_1, HWC as written
    assert np.array_equal(x[:PER_BATCH], expected) and np.array_equal(y[:PER_BATCH], labels)
    carved = carve_validation(result, 20, val_seed=7)
    stats = write_prepared(carved, tmp_path / "prep", {"data": {}}, 7)
    with np.load(tmp_path / "prep/train.npz") as tr, np.load(tmp_path / "prep/val.npz") as va:
        assert list(tr["classes"]) == CLASSES and len(tr["labels"]) == 80 and len(va["labels"]) == 20
        assert (np.bincount(va["labels"], minlength=10) == 2).all()  # stratified: two of each class
        # the validation and training images partition the official training split
        rows = lambda a: {img.tobytes() for img in a}  # noqa: E731
        assert rows(tr["images"]) | rows(va["images"]) == rows(x) and not rows(tr["images"]) & rows(va["images"])
        train_x = tr["images"]
    assert stats["counts"] == {"train": 80, "val": 20, "test": PER_BATCH} and stats["val_seed"] == 7
    assert np.allclose(stats["mean"], train_x.reshape(-1, 3).mean(0) / 255, atol=1e-5)  # of the images trained on
    assert np.allclose(stats["std"], (train_x.reshape(-1, 3) / 255).std(0), atol=1e-5)


@pytest.mark.parametrize(
    ("size", "needle"),
    [
        (5, "data.val_size: 5 gives class 'dog' no validation image: use at least 10"),
        (100, "data.val_size: 100 leaves class 'airplane' no training image (it has 10): use at most 90"),
    ],
)
def test_a_validation_size_a_class_cannot_give_is_refused(cifar_archive, size, needle):
    with pytest.raises(CnnvitError) as e:
        carve_validation(prepare(cifar_archive, "cifar10-python"), size, 0)
    assert str(e.value) == needle


def test_prepare_cli_end_to_end_is_deterministic(tmp_path, cifar_archive, capsys):
    params = tiny_params(str(cifar_archive), md5(cifar_archive))
    outs = []
    for name in ("a", "b"):
        code, err = run_cli(
            tmp_path, capsys, ["prepare", "--raw", str(cifar_archive), "--out-dir", str(tmp_path / name)], params
        )
        assert code == 0, err
        outs.append((tmp_path / name / "train.npz").read_bytes())
    # provenance (with its timestamp) is stored inside; the arrays must match exactly
    za, zb = (np.load(io.BytesIO(o)) for o in outs)
    assert all(np.array_equal(za[k], zb[k]) for k in ("images", "labels", "classes"))


@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_prepare_imagefolder_archive_and_directory(tmp_path, prefix):
    folder = make_imagefolder(tmp_path / "folder")
    archive = tar_directory(folder, tmp_path / "if.tar.gz", prefix=prefix.rstrip("/"))
    from_dir = prepare(folder, "imagefolder", 30, 30)
    from_tar = prepare(archive, "imagefolder", 30, 30)
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
        prepare(archive, "cifar10-python")
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
        prepare(archive, "cifar10-python")
    assert not marker.exists()
    pickle.loads(evil)  # the same bytes do run code when unpickled naively
    assert marker.exists()


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


def test_an_empty_class_folder_is_named(tmp_path):
    folder = make_imagefolder(tmp_path / "folder")
    for p in (folder / "test/frog").iterdir():
        p.unlink()
    with pytest.raises(CnnvitError, match="class folder test/frog has no images"):
        prepare(folder, "imagefolder")
    archive = tar_directory(folder, tmp_path / "a.tar.gz")
    with pytest.raises(CnnvitError, match="class folder test/frog has no images"):
        prepare(archive, "imagefolder")


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


# ----------------------------------------------------------------------------- splits that must not share images


def test_test_images_that_are_copies_of_training_images_are_refused(tmp_path):
    """Issue 28.9: an imagefolder whose test images were copies of its training images prepared with
    exit 0. By their pixels: a copy saved with other PNG settings (other bytes) is a copy too."""
    from PIL import Image

    root = make_imagefolder(tmp_path / "if")
    source = root / "train/cat/0003.png"
    Image.open(source).save(root / "test/cat/copy.png", compress_level=0)  # other bytes, same pixels
    assert (root / "test/cat/copy.png").read_bytes() != source.read_bytes()
    with pytest.raises(CnnvitError, match=r"1 test images are copies of training images \(test/cat/copy.png = "):
        prepare(root, "imagefolder")
    with pytest.raises(CnnvitError, match=r"train/cat/0003\.png"):
        prepare(tar_directory(root, tmp_path / "a.tar.gz"), "imagefolder")


def test_a_test_batch_row_copied_from_a_training_batch_is_refused(tmp_path):
    images, labels = synthetic_images(PER_BATCH, seed=5)  # the fixture's test_batch
    train, _ = synthetic_images(PER_BATCH, seed=2)  # data_batch_3
    images[7] = train[4]
    from conftest import batch_dict, py2_pickle

    test_batch = py2_pickle(batch_dict(images, labels, "t"))
    archive = make_cifar_python(tmp_path / "c.tar.gz", extra={"test_batch": test_batch})
    with pytest.raises(CnnvitError, match=r"\(test_batch\[7\] = data_batch_3\[4\]\)"):
        prepare(archive, "cifar10-python")


def test_copies_within_a_split_warn_and_stay_out_of_the_validation_set(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "if", per_class=6)
    for i in range(6):  # every cat is one image: all six would have to go to training
        (root / f"train/cat/{i:04d}.png").unlink() if (root / f"train/cat/{i:04d}.png").exists() else None
    cats = sorted((root / "train/cat").iterdir())
    for extra in cats[1:]:
        extra.write_bytes(cats[0].read_bytes())
    (root / "train/dog/dup.png").write_bytes(next((root / "train/dog").iterdir()).read_bytes())
    result = prepare(root, "imagefolder")
    err = capsys.readouterr().err
    assert "warning:" in err and "training images are copies of others in the train split" in err, err
    assert result["repeated"].sum() == len(cats) + 2
    with pytest.raises(CnnvitError, match=r"class 'cat' has no training image without a copy"):
        carve_validation(result, 10, 0)  # no cat may go to validation: each has a copy in training
    (root / "train/cat/other.png").write_bytes(png_bytes(synthetic_images(1, seed=99)[0][0]))
    (root / "train/cat/other2.png").write_bytes(png_bytes(synthetic_images(1, seed=98)[0][0]))
    carved = carve_validation(prepare(root, "imagefolder"), 10, 0)
    rows = lambda a: [img.tobytes() for img in a]  # noqa: E731
    assert not set(rows(carved["val"][0])) & set(rows(carved["train"][0]))  # disjoint by content


def test_data_without_copies_carves_as_before(cifar_archive):
    """The guard changes no prepared image: without copies every image is eligible for validation."""
    from cnnvit.cifar import validation_split

    result = prepare(cifar_archive, "cifar10-python")
    assert not result["repeated"].any()
    labels = result["train"][1]
    from cnnvit.cifar import stratified_indices

    _, val = validation_split(labels, 20, 3)

    assert np.array_equal(val, stratified_indices(labels, 20, 3))


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


def test_an_imbalanced_class_is_told_the_real_limit(tmp_path):
    """Three images of one class: "val_size 100 ... use at least 10" named a size that also failed."""
    root = make_imagefolder(tmp_path / "if", per_class=40)
    for extra in sorted((root / "train/cat").iterdir())[3:]:
        extra.unlink()
    result = prepare(root, "imagefolder")
    for asked in (10, 30):
        with pytest.raises(CnnvitError) as e:
            carve_validation(result, asked, 0)
        line = str(e.value)
        assert "class 'cat' no validation image (it has 3 of the 363; the carve takes each class in proportion)" in line
        named = [int(n) for n in re.findall(r"\d+", line.rsplit(": use ", 1)[1])]
        assert named and all(carve_validation(result, n, 0) for n in named)  # every size it names works
    assert line.endswith("use 29 or 37")  # rounding in proportion: 30 fails between two that fit


def test_copies_kept_for_training_count_as_training_images_of_their_class():
    from cnnvit.cifar import validation_problem

    labels = np.repeat(np.arange(10), 4)  # 4 a class; class 0's last two images are copies of each other
    eligible = np.ones(40, dtype=bool)
    eligible[[2, 3]] = False
    names = [str(c) for c in range(10)]
    assert validation_problem(labels, 20, names, eligible) is None  # class 0 gives 2, keeps its 2 copies
    assert "leaves class '1' no training image (it has 4" in validation_problem(labels, 38, names, eligible)
