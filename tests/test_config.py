"""The params loader: schema errors name the key; overrides; the stage key lists."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, write_yaml

from cnnvit.cli import main
from cnnvit.config import diff_overrides, load_config, run_config, stage_params
from cnnvit.errors import CnnvitError

PARAMS = ROOT / "params.yaml"


def test_shipped_params_are_valid_for_every_profile():
    for profile in ("paper", "quick"):
        cfg = load_config(PARAMS, [f"profile={profile}"])
        assert run_config(cfg, "vit", "paper", 0)["profile"] == profile


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("recipes.paper.lr=-1", "recipes.paper.lr: -1 is less than or equal to the minimum of 0"),
        ("recipes.paper.lrr=0.1", "unknown key recipes.paper.lrr"),
        ("bogus=1", "unknown key bogus"),
        ("profile=huge", "profile: unknown profile 'huge'"),
        ("runs.models=[vit,nope]", "unknown model 'nope' in profile"),
        ("runs.recipes=[fast]", "runs.recipes: unknown recipe 'fast'"),
        ("data.format=zip", "data.format: 'zip' is not one of"),
        ("data.md5=null", "data: no checksum"),
        ("profiles.quick.models.vit.arch=vgg", "profiles.quick.models.vit.arch"),
    ],
)
def test_bad_params_fail_with_the_key_name(override, needle, tmp_path, capsys):
    with pytest.raises(CnnvitError, match=None) as exc:
        load_config(PARAMS, [override])
    assert needle in str(exc.value)
    assert main(["download", "--params", str(PARAMS), "--set", override]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_missing_and_malformed_params_file(tmp_path):
    with pytest.raises(CnnvitError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("profile: [unclosed\n")
    with pytest.raises(CnnvitError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(CnnvitError, match="bad override"):
        load_config(PARAMS, ["novalue"])


def test_overrides_parse_yaml_values():
    cfg = load_config(PARAMS, ["runs.seeds=[0, 1]", "train.compile=true", "data.sha256=null"])
    assert cfg["runs"]["seeds"] == [0, 1] and cfg["train"]["compile"] is True


def test_diff_overrides_round_trips(tmp_path):
    base = yaml.safe_load(PARAMS.read_text())
    changed = load_config(PARAMS, ["profile=quick", "data.md5=null", f"data.sha256={'a' * 64}"])
    items = diff_overrides(base, changed)
    assert sorted(items) == sorted(['profile="quick"', "data.md5=null", f'data.sha256="{"a" * 64}"'])
    assert load_config(write_yaml(tmp_path / "p.yaml", base), items) == changed


def test_train_stage_params_are_exactly_the_run_config():
    cfg = load_config(PARAMS, ["profile=quick"])
    keys = stage_params(cfg, "train", model="vit", recipe="modern")
    assert keys["profiles.quick.models.vit"] == run_config(cfg, "vit", "modern", 0)["model"]
    assert keys["recipes.modern"] == cfg["recipes"]["modern"]
    assert not any("resnet50" in k or "recipes.paper" in k for k in keys)
