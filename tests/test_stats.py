"""The statistics and verdicts that decide the report's conclusions, on hand-made numbers, and
`cnnvit collect` on fabricated run directories."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, assert_one_line_error, write_yaml
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from cnnvit.analysis.records import write_predictions
from cnnvit.analysis.robustness import write_per_image
from cnnvit.analysis.verdicts import (
    CLAIM_COLUMNS,
    binomial_se,
    claims_table,
    compare,
    crossing,
    expected_calibration_error,
    holm,
    mcnemar_p,
    seed_stats,
    verdict,
)
from cnnvit.cli import main
from cnnvit.config.load import load_params
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec
from cnnvit.dag.paths import EVAL_PER_IMAGE

T2 = 4.302652729749464  # t(0.975, df=2), the 4.303 of every t table


def by_seed(values) -> dict[int, float]:
    return dict(enumerate(values))


def test_seed_stats_exact():
    s = seed_stats([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci_low == pytest.approx(2 - T2 / math.sqrt(3), abs=1e-9)
    assert s.ci_high == pytest.approx(2 + T2 / math.sqrt(3), abs=1e-9)
    one = seed_stats([61.5])
    assert one.n == 1 and one.mean == 61.5 and all(math.isnan(v) for v in (one.std, one.ci_low, one.ci_high))


def test_shared_seeds_are_compared_paired_and_match_scipy():
    a, b = [70.0, 72.0, 75.0], [60.0, 61.5, 63.0]
    c = compare(by_seed(a), by_seed(b))
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert c.test == "paired t" and not c.floored and c.df == 2
    d = np.array(a) - np.array(b)  # by hand: the t-interval of the per-seed differences
    assert (c.diff, c.ci_low, c.ci_high, c.p_value) == pytest.approx((d.mean(), ci.low, ci.high, ref.pvalue), abs=1e-12)
    half = T2 * d.std(ddof=1) / math.sqrt(3)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)


def test_different_seeds_are_compared_with_welch_and_match_scipy():
    a, b = {0: 70.0, 1: 72.0, 2: 74.0}, {3: 60.0, 4: 61.0, 5: 62.0}
    c = compare(a, b)
    ref = sps.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c.test == "Welch t" and c.df == pytest.approx(ref.df)
    assert (c.ci_low, c.ci_high, c.p_value) == pytest.approx((ci.low, ci.high, ref.pvalue), abs=1e-12)
    va, vb = 4 / 3, 1 / 3  # sample variances / n: the Welch-Satterthwaite df by hand
    assert c.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))
    # seeds that only partly overlap are not pairs either
    assert compare({0: 1.0, 1: 2.0, 2: 4.0}, {0: 1.0, 1: 2.0, 3: 2.0}).test == "Welch t"


def test_equal_seeds_never_give_a_zero_width_interval():
    """Issue 16.4: three identical seeds on each side gave a zero-width interval, so any gap was
    'reproduced'. The test set's binomial SE is the floor."""
    floor = math.hypot(binomial_se(60.1, 1000), binomial_se(60.0, 1000))
    c = compare(by_seed([60.1] * 3), by_seed([60.0] * 3), floor)
    assert c.floored and c.se == pytest.approx(floor) and c.ci_low < 0 < c.ci_high
    assert verdict(c.p_value, c.diff) == "inconclusive"
    assert c.half_width == pytest.approx(T2 * floor)
    # a gap far larger than the floor is still a finding
    big = compare(by_seed([70.0] * 3), by_seed([60.0] * 3), floor)
    assert big.floored and verdict(big.p_value, big.diff) == "reproduced"
    # without a floor (no test-set size known) zero spread gives no test at all
    assert math.isnan(compare(by_seed([70.0] * 3), by_seed([60.0] * 3)).p_value)


@pytest.mark.parametrize(
    ("winner", "loser", "expected"),
    [
        ([70.0, 72.0, 74.0], [60.0, 61.0, 62.0], "reproduced"),
        ([60.0, 61.0, 62.0], [70.0, 72.0, 74.0], "contradicted"),  # the opposite direction
        ([70.0, 71.0, 72.0], [70.0, 71.0, 72.0], "inconclusive"),  # a tie
        ([70.0, 60.0, 80.0], [68.0, 58.0, 81.0], "inconclusive"),  # a gap inside the noise
        ([99.0], [10.0, 11.0, 12.0], "inconclusive"),  # one seed: no noise estimate, never reproduced
        ([99.0], [10.0], "inconclusive"),
    ],
)
def test_verdicts(winner, loser, expected):
    c = compare(by_seed(winner), by_seed(loser), floor=0.5)
    assert verdict(c.p_value, c.diff) == expected


def test_holm_matches_statsmodels_and_keeps_nans():
    p = [0.01, 0.04, 0.03]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06])  # by hand: 3 x 0.01; then max(2 x 0.03, .) for both
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.7, rng.random(500) < 0.6
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
    assert mcnemar_p(a, b) == pytest.approx(sps.binomtest(n01, n01 + n10, 0.5).pvalue)
    assert mcnemar_p(a, a) == 1.0


def test_expected_calibration_error_by_hand():
    # two bins used: confidence 0.9 (4 images, 3 right) and 0.6 (2 images, both right)
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    expected = 100 * (4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6))
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def per_run(values: dict[tuple[str, str], list[float]], fraction: float = 1.0, n_train: int = 1000) -> pd.DataFrame:
    rows = [
        {
            "model": m,
            "recipe": r,
            "seed": i,
            "fraction": fraction,
            "selected_test_acc": v,
            "final_test_acc": v - 1,
            "best_test_acc": v + 1,
            "n_train": n_train,
            "n_test": 1000,
        }
        for (m, r), vs in values.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_claims_table_columns_holm_and_the_paper_gap():
    runs = per_run(
        {
            ("resnet50", "paper"): [78.0, 79.0, 80.0],
            ("vit", "paper"): [60.0, 61.0, 62.0],
            ("cnn_vit", "paper"): [61.0, 61.5, 62.5],
        }
    )
    claims = [("resnet50", "vit", "R > V"), ("cnn_vit", "vit", "C > V"), ("resnet50", "cnn_vit", "R > C")]
    t = claims_table(runs, claims, {("resnet50", "vit"): 17.38, ("cnn_vit", "vit"): 9.31})
    assert list(t.columns) == CLAIM_COLUMNS and len(t) == 3
    assert list(t.p_holm) == pytest.approx(holm(t.p_value))
    row = t.set_index(["winner", "loser"]).loc[("resnet50", "vit")]
    assert (row.test, row.metric, row.exploratory) == ("paired t", "selected", False)
    assert row.diff_pp == 18.0 and row.verdict == "reproduced"
    assert row.paper_gap_in_interval == (row.ci_low_pp <= 17.38 <= row.ci_high_pp)
    assert row.detectable_pp == pytest.approx((row.ci_high_pp - row.ci_low_pp) / 2)
    weak = t.set_index(["winner", "loser"]).loc[("cnn_vit", "vit")]
    # +0.67 pp with seeds that agree closely: the test-set floor (1,000 images) sets the width
    assert weak.se_floored and weak.p_holm >= weak.p_value and weak.verdict == "inconclusive"
    final = claims_table(runs, claims, {}, metric="final")
    assert set(final.metric) == {"final"} and final.diff_pp.iloc[0] == 18.0


def test_claims_use_the_selected_accuracy_not_the_best_on_test():
    runs = per_run({("resnet50", "paper"): [70.0, 70.5, 71.0], ("vit", "paper"): [70.0, 70.4, 71.1]})
    runs.loc[runs.model == "resnet50", "best_test_acc"] += 10  # resnet50 peaks on test at some other epoch
    t = claims_table(runs, [("resnet50", "vit", "R > V")], {})
    assert abs(t.diff_pp.iloc[0]) < 0.1 and t.verdict.iloc[0] == "inconclusive"


def test_mcnemar_columns_come_from_the_predictions():
    runs = per_run({("resnet50", "paper"): [80.0, 81.0], ("vit", "paper"): [60.0, 61.0]})
    rng = np.random.default_rng(1)
    right = {
        (m, "paper", s): rng.random(1000) < (0.8 if m == "resnet50" else 0.6)
        for m in ("resnet50", "vit")
        for s in (0, 1)
    }
    t = claims_table(runs, [("resnet50", "vit", "R > V")], {}, right=right)
    assert t.mcnemar_seeds_agree.iloc[0] == "2/2" and t.mcnemar_p_max.iloc[0] < 1e-6


def test_crossing_is_judged_with_the_claims_rules():
    small = per_run({("vit", "paper"): [20.0, 21.0, 22.0], ("cnn_vit", "paper"): [30.0, 31.0, 32.0]}, 0.1, 100)
    big = per_run({("vit", "paper"): [70.0, 71.0, 72.0], ("cnn_vit", "paper"): [60.0, 61.0, 62.0]}, 1.0, 1000)
    c = crossing(pd.concat([small, big]), "vit", "cnn_vit", "paper")
    assert [p["verdict"] for p in c["points"]] == ["contradicted", "reproduced"]
    assert "cross" in c["text"] and "100" in c["text"] and "1000" in c["text"]
    noisy = per_run({("vit", "paper"): [20.0, 40.0, 30.0], ("cnn_vit", "paper"): [25.0, 35.0, 30.0]}, 0.1, 100)
    assert "no crossing" in crossing(pd.concat([noisy, big]), "vit", "cnn_vit", "paper")["text"]


# ----------------------------------------------------------------------------- collect


ACCS = {"resnet50": [78.0, 79.0, 77.5], "vit": [61.0, 60.0, 62.5], "cnn_vit": [70.0, 71.0, 69.0]}


def fabricate(tmp_path, accs=ACCS, seeds=(0, 1, 2), extra: dict | None = None, predictions: bool = False) -> dict:
    """params.yaml for these runs, and run directories holding only what a hand-made run would."""
    cfg = load_params(ROOT / "params.yaml").raw
    cfg["runs"].update(models=list(accs), recipes=["paper"], seeds=list(seeds))
    write_yaml(tmp_path / "params.yaml", cfg)
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    for model, values in accs.items():
        for seed, acc in zip(seeds, values, strict=False):
            d = tmp_path / f"results/runs/{model}-paper-s{seed}"
            d.mkdir(parents=True)
            summary = {
                "selected_test_acc": acc,
                "final_test_acc": acc - 1,
                "best_test_acc": acc + 0.5,
                "n_test": 10_000,
            }
            (d / "summary.json").write_text(json.dumps({**summary, **(extra or {})}))
            (d / "metrics.csv").write_text(f"epoch,val_acc,test_acc\n1,{acc - 2},{acc - 1}\n2,{acc},{acc}\n")
            e = tmp_path / f"results/eval/{model}-paper-s{seed}"
            e.mkdir(parents=True)
            cells = [("clean", 0, acc)] + [(c, s, acc - 5 * s) for c in ("fog", "contrast") for s in (1, 2)]
            (e / "robustness.csv").write_text(
                "corruption,severity,acc,images\n" + "".join(f"{c},{s},{a},100\n" for c, s, a in cells)
            )
            heads = [(layer, head, 2.0 + layer + head) for layer in (1, 2) for head in (1, 2)] if "vit" in model else []
            (e / "attention.csv").write_text(
                "layer,head,distance_px\n" + "".join(f"{la},{h},{d}\n" for la, h, d in heads)
            )
            first = lambda a: np.arange(100) < round(a)  # noqa: E731 (right on the first a% of the 100 images)
            corrupted = np.array([[first(a) for c, s, a in cells[1:] if c == name] for name in ("fog", "contrast")])
            write_per_image(e / EVAL_PER_IMAGE, first(acc), corrupted, np.arange(100), ["fog", "contrast"], [1, 2])
            if predictions:
                logits = rng.normal(size=(200, 10)).astype(np.float16)
                right = rng.random(200) < acc / 100
                logits[right, labels[right]] = 10  # right where the accuracy says
                write_predictions(
                    d / "predictions.npz", labels=labels, indices=np.arange(200), classes=np.array(list("abcdefghij")),
                    selected_logits=logits, final_logits=logits, selected_epoch=2, final_epoch=2,
                )  # fmt: skip
    columns = "model,arch,size,params,flops_per_image,latency_ms_median,latency_ms_p95,throughput_images_per_s,batch,"
    (tmp_path / "cost.csv").write_text(
        columns
        + "inference_peak_mb,inference_step_mb,training_peak_mb,training_step_mb,device,threads\n"
        + "".join(f"{m},x,32,1000,2000,1.0,1.2,500,8,10,1,20,2,cpu,1\n" for m in accs)
    )
    return cfg


def collect(tmp_path, *sets: str) -> int:
    return main(
        [
            "collect",
            "--params",
            str(tmp_path / "params.yaml"),
            "--runs-dir",
            str(tmp_path / "results/runs"),
            "--out-dir",
            str(tmp_path / "tables"),
            "--eval-dir",
            str(tmp_path / "results/eval"),
            "--cost",
            str(tmp_path / "cost.csv"),
            *[a for s in sets for a in ("--set", s)],
        ]
    )


def test_fabricated_runs_give_the_defined_verdicts(tmp_path):
    fabricate(tmp_path, predictions=True)
    assert collect(tmp_path) == 0
    claims = pd.read_csv(tmp_path / "tables/claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    got = {(c.winner, c.loser): c.verdict for c in claims.itertuples()}
    assert got == {
        ("resnet50", "vit"): "reproduced",
        ("cnn_vit", "vit"): "reproduced",
        ("resnet50", "cnn_vit"): "reproduced",
    }
    r = claims.set_index(["winner", "loser"]).loc[("resnet50", "vit")]
    c = compare(by_seed(ACCS["resnet50"]), by_seed(ACCS["vit"]))
    assert (r.diff_pp, r.ci_low_pp, r.ci_high_pp, r.paper_diff_pp) == pytest.approx(
        (c.diff, c.ci_low, c.ci_high, 17.38)
    )
    assert r.test == "paired t" and r.p_holm >= r.p_value
    metrics = json.loads((tmp_path / "tables/metrics.json").read_text())
    assert metrics["claims"]["resnet50_vs_vit-paper"]["verdict"] == "reproduced"
    summary = pd.read_csv(tmp_path / "tables/summary.csv").set_index("model")
    assert summary.loc["vit", "selected_test_acc_mean"] == pytest.approx(61.1666666, abs=1e-6)
    assert summary.loc["vit", "final_test_acc_mean"] == pytest.approx(60.1666666, abs=1e-6)
    assert summary.loc["vit", "optimism_pp"] == pytest.approx(0.5)
    runs = pd.read_csv(tmp_path / "tables/runs.csv")
    assert runs.selected_ece.notna().all()
    confusion = pd.read_csv(tmp_path / "tables/confusion.csv")
    assert confusion.groupby("model")["count"].sum().eq(3 * 200).all()  # pooled over 3 seeds
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
