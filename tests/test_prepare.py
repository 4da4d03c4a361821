"""The prepare stage on fixture archives in the official formats: the arrays, the validation carve
and its stats, determinism; and splits that must not share images (copies between and within
splits). Archives it refuses are in test_refusals_archives.py."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from conftest import (
    CLASSES,
    PER_BATCH,
    batch_dict,
    make_cifar_python,
    make_imagefolder,
    md5,
    png_bytes,
    py2_pickle,
    run_cli,
    synthetic_images,
    tar_directory,
    tiny_params,
)

from cnnvit.errors import CnnvitError
from cnnvit.stages.prepare import carve_validation, prepare, write_prepared


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
