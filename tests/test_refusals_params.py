"""Careless and hostile params, each defect one of a class guarded where it lives (issue 28):
one YAML reader (duplicate keys, alias bombs, files that are not params, huge values in a
message), every number of the config finite, fractions and test subsets bounded by the data
(where only the prepared data can tell, at the stage), seeds bounded; nothing the project ships is
refused."""

from __future__ import annotations

import copy
import math
import time

import pytest
import yaml
from conftest import (
    PARAMS,
    assert_one_line_error,
    make_cifar_python,
    make_project,
    md5,
    prepare_dir,
    run_cli,
    sh,
    tiny_params,
    write_yaml,
)

from cnnvit.cli import main
from cnnvit.config.load import MAX_VALUES, check, load_params, params_from_dict, yaml_load
from cnnvit.errors import CnnvitError

SHIPPED = yaml_load(PARAMS.read_text(), "params.yaml")  # aliases unshared: each preset's own leaves


# ----------------------------------------------------------------------------- one YAML reader


def test_a_key_given_twice_is_refused_naming_its_lines(tmp_path, capsys):
    """Issue 28.6: a second `lr:` under recipes.paper, or a trailing `preset: quick`, won silently."""
    text = PARAMS.read_text()
    lr = text.replace("    lr: 1.0e-3", "    lr: 1.0\n    lr: 1.0e-3", 1)
    for name, body, line in [("lr", lr, "lr"), ("preset", text + "preset: quick\n", "preset")]:
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(body)
        assert main(["download", "--params", str(bad)]) == 1
        err = capsys.readouterr().err
        assert_one_line_error(1, err, str(bad), "duplicate key", f"key '{line}' at line", "delete one of them")
    # in a --set value too, and a merge key (<<) overridden by an explicit key is not a duplicate
    with pytest.raises(CnnvitError, match="duplicate key"):
        yaml_load("{lr: 1, lr: 2}", "override")
    assert yaml_load("base: &b {lr: 1, wd: 2}\nmine:\n  <<: *b\n  lr: 3\n", "x")["mine"] == {"lr": 3, "wd": 2}


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"\xff\xfe\x00p\x00r\x00", "is not UTF-8 text"),
        (None, "is a folder, not a file"),
        (b"x" * (2 << 20), "not a params file"),
        (b"preset: paper\n" + b"a: [" * 3000 + b"]" * 3000, "nested too deeply"),
    ],
    ids=["not-utf8", "directory", "huge", "deep"],
)
def test_a_params_path_that_is_not_a_params_file_is_one_line(tmp_path, capsys, body, needle):
    target = tmp_path / "p"
    target.mkdir() if body is None else target.write_bytes(body)
    code = main(["plan", "--params", str(target)])
    assert_one_line_error(code, capsys.readouterr().err, needle)


# runs.seeds as 419 bytes of YAML that expand to 10^9 values
SEEDS_BOMB = (
    "runs:\n  seeds: [&a0 [1,1,1,1,1,1,1,1,1,1], "
    + ", ".join(f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9))
    + "]\n"
)


def alias_bomb(levels: int) -> str:
    """Top-level keys a0..a<levels-1>, each ten references to the one before: 10^levels strings."""
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


def test_snakemakes_config_goes_through_the_alias_guard():
    """Issue 28.10: Snakemake loads --configfile itself (shared aliases, cheap); what walks it next
    (the schema check) expanded a 459-byte bomb to 10^9 values: 30 s and 3 GB. params_from_dict is
    where Snakemake's config enters, so the guard is there."""
    tree = yaml.safe_load(SEEDS_BOMB)
    with pytest.raises(CnnvitError, match="alias bomb"):
        params_from_dict({**SHIPPED, **tree}, "config")


@pytest.mark.slow  # three Snakemake start-ups: 6 s
def test_snakemake_refuses_an_alias_bomb_and_a_duplicate_key_in_any_config_file_in_one_line(tmp_path):
    """Issue 28.10: `snakemake -n --configfile bomb.yaml` (459 bytes) ran 30 s to a MemoryError at 3 GB;
    Snakemake's reader also kept the second of two `lr:` keys. Both through the project's reader now."""
    project = make_project(tmp_path / "p", tiny_params("x.tar.gz", "0" * 32), git=False)
    (project / "bomb.yaml").write_text(SEEDS_BOMB)
    text = (project / "params.yaml").read_text()
    (project / "dup.yaml").write_text(text + "preset: quick\n")
    for config, needle in [("bomb.yaml", "an alias bomb?"), ("dup.yaml", "duplicate key")]:
        proc = sh(f"ulimit -v 3000000; snakemake -n --configfile {config}", project, check=False)
        ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert proc.returncode == 1 and len(ours) == 1 and needle in ours[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    (project / "params.yaml").write_text(text.replace("preset: tiny\n", "preset: tiny\npreset: tiny\n"))
    proc = sh("snakemake -n", project, check=False)
    assert proc.returncode == 1 and "params.yaml: duplicate key at line" in proc.stderr, proc.stderr[-2000:]


def test_a_huge_value_in_an_error_is_cut_short(capsys):
    seeds = f"runs.seeds=[{', '.join(['7'] * 5000)}]"  # not unique: the message quotes all 5,000
    assert main(["download", "--params", str(PARAMS), "--set", seeds]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400 and "characters)" in err


# ----------------------------------------------------------------------------- every number finite


def numeric_leaves(node, path=()):
    if isinstance(node, bool):
        return
    if isinstance(node, int | float):
        yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from numeric_leaves(child, (*path, key))


def with_value(cfg: dict, path: tuple, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


LEAVES = list(numeric_leaves(SHIPPED))


def test_every_number_in_the_config_is_finite_or_refused_at_validation():
    """Issue 28.7: label_smoothing .nan trained as 0, lr .nan was a traceback at train, lr .inf and
    weight_decay .nan were caught only at train ("lower lr"), train_fractions [.nan, 1.0] was a
    traceback in every command. Every number params.yaml holds, NaN and both infinities."""
    assert len(LEAVES) > 100  # every preset's model sizes, every recipe, the data, runtime, cost
    for i, path in enumerate(LEAVES):
        dotted = ".".join(map(str, path))
        for value in (math.nan, math.inf, -math.inf):
            # the whole load for a few (a second each), the check it starts with for every one
            validate = params_from_dict if i % 50 == 0 else check
            with pytest.raises(CnnvitError, match=rf"{dotted}: -?(nan|inf) is not a finite number"):
                validate(with_value(SHIPPED, path, value))


@pytest.mark.parametrize(
    "override", ["recipes.paper.label_smoothing=.nan", "recipes.paper.lr=.inf", "runs.train_fractions=[.nan, 1.0]"]
)
def test_non_finite_overrides_are_one_line_in_every_command(capsys, override):
    for command in ("download", "plan", "collect"):
        code = main([command, "--params", str(PARAMS), "--set", override])
        assert_one_line_error(code, capsys.readouterr().err, "is not a finite number", override.split("=")[0])


# ----------------------------------------------------------------------------- bounded by the data


def test_a_fraction_below_one_image_a_class_is_refused_with_the_least_that_works():
    """Issue 28.8: train_fractions [1e-9, 1.0] planned 3,000,000,000 epochs of one image."""
    with pytest.raises(CnnvitError, match=r"1e-09 of 45,000 training images is 1, fewer than one image a class"):
        load_params(PARAMS, ["runs.train_fractions=[1e-9, 1.0]"])
    with pytest.raises(CnnvitError, match=r"use at least 0.004\b"):
        load_params(PARAMS, ["preset=quick", "runs.train_fractions=[0.001, 1.0]"])
    load_params(PARAMS, ["preset=quick", "runs.train_fractions=[0.004, 1.0]"])  # 10 images: one a class


def test_fractions_that_train_the_same_images_are_refused():
    with pytest.raises(CnnvitError, match=r"0.5 and 0.5000001 both train the same 22,500 images"):
        load_params(PARAMS, ["runs.train_fractions=[0.5, 0.5000001, 1.0]"])
    with pytest.raises(CnnvitError, match=r"both train the same 1,250 images \(of 2,500\)"):
        load_params(PARAMS, ["preset=quick", "runs.train_fractions=[0.5, 0.50001]"])
    load_params(PARAMS, ["runs.train_fractions=[0.5, 0.51]"])  # different sizes are fine


def test_test_subsets_larger_than_the_test_images_are_refused():
    """robustness_images 5000 was cut to the quick preset's 200... test images without a word."""
    with pytest.raises(CnnvitError, match=r"presets.quick.robustness_images: 5,000 is more than .* 1,000 test"):
        load_params(PARAMS, ["preset=quick", "presets.quick.robustness_images=5000"])
    with pytest.raises(CnnvitError, match=r"presets.paper.attention_images: 20,000 .* 10,000 test images"):
        load_params(PARAMS, ["presets.paper.attention_images=20000"])


@pytest.fixture(scope="module")
def unknown_pool(tmp_path_factory):
    """Params that cannot tell the training-set size (expect_train 0), and prepared data."""
    d = tmp_path_factory.mktemp("pool")
    archive = make_cifar_python(d / "c.tar.gz")
    prepare_dir(archive, d / "prepared")  # 100 - 20 = 80 training images
    raw = tiny_params(str(archive), md5(archive), epochs=1, recipes=["paper"])
    raw["data"]["expect_train"] = 0
    return d, raw


def test_fractions_are_bounded_at_train_when_params_cannot_tell(unknown_pool, tmp_path, capsys):
    """Issue 28 (smaller): with expect_train 0 and train_size 0, 0.5 and 0.5000001 both trained the
    same images: the round-three check needs the pool's size, which only the prepared data tells."""
    d, raw = unknown_pool
    raw = copy.deepcopy(raw)
    raw["runs"]["train_fractions"] = [0.5, 0.5000001, 1.0]
    load_params_ok = params_from_dict(raw)  # validation cannot tell
    assert load_params_ok.runs.train_fractions == (0.5, 0.5000001, 1.0)
    argv = ["train", "--model", "vit", "--recipe", "paper", "--fraction", "0.5", "--data-dir", str(d / "prepared")]
    argv += ["--runs-dir", str(tmp_path / "r"), "--ckpt-dir", str(tmp_path / "ck")]
    code, err = run_cli(tmp_path, capsys, argv, raw)
    assert_one_line_error(code, err, "0.5 and 0.5000001 both train the same 40 images (of 80)", "keep one of them")
    raw["runs"]["train_fractions"] = [1.0]
    argv[argv.index("--fraction") + 1] = "0.01"
    code, err = run_cli(tmp_path, capsys, argv, raw)
    assert_one_line_error(code, err, "--fraction 0.01", "0.01 of 80 training images is 1", "use at least 0.13")
    assert not (tmp_path / "r").exists() and not (tmp_path / "ck").exists()


def test_robustness_images_beyond_the_prepared_test_images_are_refused_at_corrupt(unknown_pool, tmp_path, capsys):
    """robustness_images 5000 was cut to the test images without a word: where params cannot tell
    (expect_test 0, test_size 0), cnnvit corrupt says it, and writes nothing."""
    d, raw = unknown_pool
    raw = copy.deepcopy(raw)
    raw["data"]["expect_test"] = 0
    raw["presets"]["tiny"]["robustness_images"] = 5000
    argv = ["corrupt", "--data-dir", str(d / "prepared"), "--out", str(tmp_path / "c.npz")]
    code, err = run_cli(tmp_path, capsys, argv, raw)
    assert_one_line_error(code, err, "presets.tiny.robustness_images: 5,000 is more than the 20 test images")
    assert not (tmp_path / "c.npz").exists()


# ----------------------------------------------------------------------------- seeds, and what the project ships


def test_seeds_in_the_config_are_bounded_like_the_arguments():
    for key in ("runs.seeds=[4294967296]", "data.val_seed=4294967296", "robustness.seed=-1"):
        with pytest.raises(CnnvitError, match=r"maximum of 4294967295|minimum of 0"):
            load_params(PARAMS, [key])


def test_the_shipped_params_file_still_loads_and_keeps_its_numbers(tmp_path):
    """The guards refuse nothing the project ships: a params file written back loads to the same
    numbers (every preset loading is test_presets.py's test_shipped_params_are_valid_for_every_preset)."""
    assert load_params(write_yaml(tmp_path / "p.yaml", SHIPPED)).raw == load_params(PARAMS).raw
