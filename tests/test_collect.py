"""`cnnvit collect` on fabricated run directories: the verdicts it defines, the tables it writes,
and the runs it refuses in one line (files that do not belong together, other params, a corrupt
summary, non-finite or malformed tables, a cost table of other model sizes, a claim whose model does
not run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, assert_one_line_error, write_yaml
from fabricated_runs import ACCS, collect, fabricate

from cnnvit.config.load import load_params
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.paper import CLAIMS
from cnnvit.stats.claims import CLAIM_COLUMNS


def test_fabricated_runs_give_the_defined_verdicts(tmp_path):
    fabricate(tmp_path)
    assert collect(tmp_path) == 0
    claims = pd.read_csv(tmp_path / "tables/claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    got = {c.claim_id: c.verdict for c in claims.itertuples()}
    assert got == {
        "hybrid_beats_vit": "reproduced",
        "resnet_beats_vit": "reproduced",
        "hybrid_near_resnet": "contradicted",
    }
    r = claims.set_index("claim_id").loc["resnet_beats_vit"]
    assert r.diff_pp == pytest.approx(np.mean(ACCS["resnet50"]) - np.mean(ACCS["vit"]))
    assert r.final_diff_pp == pytest.approx(r.diff_pp)  # both last epochs are 1 pp lower
    assert (r.paper_gap_pp, r.paper_table4_gap_pp, r.level) == (20.45, 17.38, pytest.approx(1 - 0.05 / 3))
    assert r.test == "paired seeds x paired images" and r.p_adjusted < 0.05 and r.mde_pp > 0
    metrics = json.loads((tmp_path / "tables/metrics.json").read_text())
    assert metrics["claims"]["resnet_beats_vit-paper"]["verdict"] == "reproduced"
    summary = pd.read_csv(tmp_path / "tables/summary.csv").set_index("model")
    assert summary.loc["vit", "selected_test_acc_mean"] == pytest.approx(61.1666666, abs=1e-6)
    assert summary.loc["vit", "final_test_acc_mean"] == pytest.approx(60.1666666, abs=1e-6)
    assert summary.loc["vit", "optimism_pp"] == pytest.approx(0.5)
    runs = pd.read_csv(tmp_path / "tables/runs.csv")
    assert runs.selected_ece.notna().all()
    confusion = pd.read_csv(tmp_path / "tables/confusion.csv")
    assert confusion.groupby("model")["count"].sum().eq(3 * 1000).all()  # pooled over 3 seeds
    assert set(pd.read_csv(tmp_path / "tables/per_class.csv")["class"]) == set("abcdefghij")
    assert set(pd.read_csv(tmp_path / "tables/variants.csv").exploratory) <= {True}


def test_the_verdicts_can_be_switched_to_the_final_epoch(tmp_path):
    fabricate(tmp_path)
    assert collect(tmp_path, "analysis.metric=final") == 0
    assert set(pd.read_csv(tmp_path / "tables/claims.csv").metric) == {"final"}
    assert collect(tmp_path, "analysis.metric=best") == 1  # chosen on the test set: not a verdict metric


def test_a_single_seed_never_says_reproduced(tmp_path):
    fabricate(tmp_path, {"resnet50": [99.0], "vit": [10.0], "cnn_vit": [50.0]}, seeds=(0,))
    assert collect(tmp_path) == 0
    assert set(pd.read_csv(tmp_path / "tables/claims.csv").verdict) == {"inconclusive"}


def test_one_model_still_gives_readable_tables(tmp_path):
    fabricate(tmp_path, {"vit": [61.0, 62.0]}, seeds=(0, 1))
    assert collect(tmp_path) == 0
    for name in ("claims.csv", "variants.csv", "datasize_pairs.csv"):
        assert pd.read_csv(tmp_path / "tables" / name).empty  # a header, no rows


# ----------------------------------------------------------------------------- what collect refuses


def test_a_claim_whose_model_does_not_run_is_named(tmp_path, capsys):
    """Issue 28.13 / 26: dropping a model a claim needs ends in one line naming the key; dropping
    the claim too is allowed, and the report then says which claims were not tested."""
    cfg = fabricate(tmp_path, {"vit": [61.0, 62.0], "cnn_vit": [70.0, 71.0]}, seeds=(0, 1))
    cfg["analysis"]["claims"] = [c.id for c in CLAIMS]
    write_yaml(tmp_path / "params.yaml", cfg)
    assert_one_line_error(
        collect(tmp_path), capsys.readouterr().err, "analysis.claims: resnet_beats_vit needs resnet50", "runs.models"
    )
    for bad, needle in (("-1", "close_margin_pp: -1"), ("abc", "close_margin_pp"), (".nan", "close_margin_pp")):
        assert_one_line_error(collect(tmp_path, f"analysis.close_margin_pp={bad}"), capsys.readouterr().err, needle)


def test_runs_whose_predictions_do_not_belong_are_refused(tmp_path, capsys):
    """A copied predictions file, an edited accuracy or a missing file: one line naming the run."""
    fabricate(tmp_path)
    runs = tmp_path / "results/runs"
    (runs / "vit-paper-s1/predictions.npz").write_bytes((runs / "vit-paper-s0/predictions.npz").read_bytes())
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "vit-paper-s1", "do not belong together")
    (tmp_path / "b").mkdir()
    fabricate(tmp_path / "b")
    runs = tmp_path / "b/results/runs"
    summary = json.loads((runs / "vit-paper-s1/summary.json").read_text())
    (runs / "vit-paper-s1/summary.json").write_text(json.dumps({**summary, "selected_test_acc": 99.0}))
    assert_one_line_error(collect(tmp_path / "b"), capsys.readouterr().err, "selected_test_acc 99.0000")
    (runs / "vit-paper-s1/summary.json").write_text(json.dumps(summary))
    (runs / "cnn_vit-paper-s2/predictions.npz").unlink()
    assert_one_line_error(
        collect(tmp_path / "b"), capsys.readouterr().err, "run cnn_vit-paper-s2 has no predictions.npz"
    )
    assert not (tmp_path / "b/tables").exists()


def _copy(src: str, dst: str):
    return lambda root: (root / dst).write_bytes((root / src).read_bytes())


def _edit_json(path: str, **changes):
    def edit(root):
        d = json.loads((root / path).read_text())
        (root / path).write_text(json.dumps({**d, **changes}))

    return edit


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (_copy("results/runs/vit-paper-s0/predictions.npz", "results/runs/vit-paper-s1/predictions.npz"),
         "predictions.npz is of run vit-paper-s0"),
        (_copy("results/runs/resnet50-paper-s1/metrics.csv", "results/runs/vit-paper-s1/metrics.csv"),
         "metrics.csv gives"),
        (_edit_json("results/runs/vit-paper-s1/summary.json", seed="zero"), "seed is 'zero', not a whole number"),
        (_edit_json("results/runs/vit-paper-s1/summary.json", selected_test_acc=99.0), "selected_test_acc 99.0000"),
        # a run trained again since its evaluation: its weights changed, its eval folder did not
        (_edit_json("results/eval/vit-paper-s1/evaluation.json", weights_sha256="an-earlier-training"),
         "was evaluated on other weights than run vit-paper-s1's"),
        (_copy("results/eval/vit-paper-s0/evaluation.json", "results/eval/vit-paper-s1/evaluation.json"),
         "is not run vit-paper-s1's evaluation"),
    ],
)  # fmt: skip
def test_a_runs_files_must_belong_together(tmp_path, capsys, spoil, needle):
    """Issue 28.3: each of these collected with exit 0 and wrong numbers."""
    fabricate(tmp_path)
    spoil(tmp_path)
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, needle)
    assert not (tmp_path / "tables").exists()


def test_collect_refuses_runs_trained_under_other_params(tmp_path, capsys):
    """Issue 9.2: quick runs were collected and labelled as the paper preset."""
    p = load_params(ROOT / "params.yaml", ["preset=quick"])
    trained_as = json.loads(json.dumps(run_config(p, RunSpec("vit", "paper", 0)).identity()))
    fabricate(
        tmp_path, {"resnet50": [78.0], "vit": [61.0], "cnn_vit": [70.0]}, seeds=(0,), extra={"config": trained_as}
    )
    code = collect(tmp_path)
    assert_one_line_error(
        code,
        capsys.readouterr().err,
        "run resnet50-paper-s0 was trained with other params",
        "preset: 'quick' -> 'paper'",
        "--set preset=quick",
    )
    assert not (tmp_path / "tables").exists()


def test_collect_names_a_corrupt_summary(tmp_path, capsys):
    fabricate(tmp_path)
    (tmp_path / "results/runs/vit-paper-s1/summary.json").write_text("{truncated")
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "vit-paper-s1/summary.json is corrupt")
    (tmp_path / "results/runs/vit-paper-s1/summary.json").write_text('{"selected_test_acc": 60, "best_test_acc": 61}')
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "missing final_test_acc")
    (tmp_path / "results/runs/vit-paper-s1/summary.json").unlink()
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "run vit-paper-s1 has no results")


@pytest.mark.parametrize(
    ("where", "text", "needle"),
    [
        ("results/eval/vit-paper-s1/robustness.csv", "corruption,severity,acc,images\nclean,0,nan,100\n",
         "robustness.csv: column acc, line 2: 'nan' is not a finite number"),
        ("results/eval/vit-paper-s1/robustness.csv", "corruption,severity,acc,images\nclean,0,-inf,100\n",
         "column acc, line 2: '-inf' is not a finite"),
        ("results/eval/vit-paper-s1/robustness.csv", "corruption,severity,images\nclean,0,100\n",
         "robustness.csv has no column acc"),
        ("results/eval/vit-paper-s1/attention.csv", "layer,head,distance_px\n", "attention.csv has only a header"),
        ("cost.csv", "model,size\nvit,32\n", "cost.csv has no column params"),
        ("cost.csv", "\x00\xff garbage", "cost.csv"),
        ("results/runs/vit-paper-s1/metrics.csv", "epoch,val_acc,test_acc\n1,inf,50\n",
         "metrics.csv: column val_acc, line 2"),
    ],
)  # fmt: skip
def test_collect_checks_every_table_it_reads(tmp_path, capsys, where, text, needle):
    """Issue 28.4: NaN or inf reached the tables, a missing column gave an all-NaN row, a header-only
    attention.csv dropped a seed, a malformed cost.csv was a traceback."""
    fabricate(tmp_path)
    (tmp_path / where).write_text(text, errors="surrogateescape")
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, needle)
    assert not (tmp_path / "tables").exists()


def test_non_finite_numbers_in_a_run_are_refused_naming_it(tmp_path, capsys):

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


def test_collect_refuses_a_cost_table_of_other_model_sizes(tmp_path, capsys):
    fabricate(tmp_path, extra={"params": 1000})
    assert collect(tmp_path) == 0
    (tmp_path / "b").mkdir()
    fabricate(tmp_path / "b", extra={"params": 1234})  # the runs' models have other sizes than cost.csv's
    code = collect(tmp_path / "b")
    assert_one_line_error(code, capsys.readouterr().err, "cost.csv was measured for another", "run `cnnvit cost` again")
