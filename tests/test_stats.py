"""The statistics and verdicts that decide the report's conclusions, on hand-made numbers, and
`cnnvit collect` on fabricated run directories."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import ROOT, assert_one_line_error, write_yaml
from scipy import stats as sps

from cnnvit.analysis.verdicts import CLAIM_COLUMNS, binomial_se, claims_table, crossing, seed_stats, verdict, welch
from cnnvit.cli import main
from cnnvit.config.load import load_params
from cnnvit.config.runs import run_config
from cnnvit.config.types import RunSpec

T2 = 4.302652729749464  # t(0.975, df=2), the 4.303 of every t table


def test_seed_stats_exact():
    s = seed_stats([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci_low == pytest.approx(2 - T2 / math.sqrt(3), abs=1e-9)
    assert s.ci_high == pytest.approx(2 + T2 / math.sqrt(3), abs=1e-9)
    one = seed_stats([61.5])
    assert one.n == 1 and one.mean == 61.5 and all(math.isnan(v) for v in (one.std, one.ci_low, one.ci_high))
    flat = seed_stats([50.0, 50.0])
    assert (flat.std, flat.ci_low, flat.ci_high) == (0.0, 50.0, 50.0)


def test_welch_matches_scipy_and_hand_values():
    a, b = [70.0, 72.0, 74.0], [60.0, 61.0, 62.0]
    diff, low, high = welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == 11.0 and low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
    va, vb = 4 / 3, 1 / 3  # sample variances / n
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (low, high) == pytest.approx((11 - half, 11 + half), abs=1e-12)
    assert low > 0 and verdict(low, high) == "reproduced"


@pytest.mark.parametrize(
    ("winner", "loser", "expected"),
    [
        ([70.0, 72.0, 74.0], [60.0, 61.0, 62.0], "reproduced"),
        ([60.0, 61.0, 62.0], [70.0, 72.0, 74.0], "contradicted"),  # the opposite direction
        ([70.0, 71.0, 72.0], [70.0, 71.0, 72.0], "inconclusive"),  # a tie
        ([70.0, 60.0, 80.0], [68.0, 58.0, 79.0], "inconclusive"),  # a gap inside the noise
        ([99.0], [10.0, 11.0, 12.0], "inconclusive"),  # one seed: no noise estimate, never reproduced
        ([99.0], [10.0], "inconclusive"),
        ([70.0, 70.0, 70.0], [60.0, 60.0, 60.0], "reproduced"),  # zero variance: the interval is the gap
        ([60.0, 60.0], [70.0, 70.0], "contradicted"),
        ([65.0, 65.0], [65.0, 65.0], "inconclusive"),  # zero variance and a tie
    ],
)
def test_verdicts(winner, loser, expected):
    assert verdict(*welch(winner, loser)[1:]) == expected


def test_verdict_edges():
    assert verdict(0.0, 3.0) == "inconclusive" and verdict(-3.0, 0.0) == "inconclusive"
    assert verdict(1e-9, 3.0) == "reproduced" and verdict(float("nan"), 3.0) == "inconclusive"
    assert binomial_se(50.0, 10000) == pytest.approx(0.5) and binomial_se(90.0, 100) == pytest.approx(3.0)


def per_run(values: dict[tuple[str, str], list[float]], fraction: float = 1.0, n_train: int = 1000) -> pd.DataFrame:
    rows = [
        {
            "model": m,
            "recipe": r,
            "seed": i,
            "fraction": fraction,
            "best_test_acc": v,
            "final_test_acc": v,
            "n_train": n_train,
            "n_test": 1000,
        }
        for (m, r), vs in values.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_claims_table_has_exactly_the_columns_and_the_paper_gap():
    runs = per_run({("resnet50", "paper"): [78.0, 79.0, 80.0], ("vit", "paper"): [60.0, 61.0, 62.0]})
    t = claims_table(
        runs, [("resnet50", "vit", "ResNet50 beats ViT"), ("cnn_vit", "vit", "absent")], {("resnet50", "vit"): 17.38}
    )
    assert list(t.columns) == CLAIM_COLUMNS and len(t) == 1
    row = t.iloc[0]
    assert (row.winner, row.loser, row.recipe, row.seeds_winner, row.seeds_loser) == ("resnet50", "vit", "paper", 3, 3)
    assert row.diff_pp == 18.0 and row.paper_diff_pp == 17.38 and row.verdict == "reproduced"


def test_crossing_is_judged_with_the_claims_rules():
    small = per_run({("vit", "paper"): [20.0, 21.0, 22.0], ("cnn_vit", "paper"): [30.0, 31.0, 32.0]}, 0.1, 100)
    big = per_run({("vit", "paper"): [70.0, 71.0, 72.0], ("cnn_vit", "paper"): [60.0, 61.0, 62.0]}, 1.0, 1000)
    c = crossing(pd.concat([small, big]), "vit", "cnn_vit", "paper")
    assert [p["verdict"] for p in c["points"]] == ["contradicted", "reproduced"]
    assert "the curves cross: vit is ahead at 1000 images and behind at 100" not in c["text"]
    assert "cross" in c["text"] and "100" in c["text"] and "1000" in c["text"]
    noisy = per_run({("vit", "paper"): [20.0, 40.0, 30.0], ("cnn_vit", "paper"): [25.0, 35.0, 30.0]}, 0.1, 100)
    assert "no crossing" in crossing(pd.concat([noisy, big]), "vit", "cnn_vit", "paper")["text"]


# ----------------------------------------------------------------------------- collect


ACCS = {"resnet50": [78.0, 79.0, 77.5], "vit": [61.0, 60.0, 62.5], "cnn_vit": [70.0, 71.0, 69.0]}


def fabricate(tmp_path, accs=ACCS, seeds=(0, 1, 2), extra: dict | None = None) -> dict:
    """params.yaml for these runs, and run directories holding only what a hand-made run would."""
    cfg = load_params(ROOT / "params.yaml").raw
    cfg["runs"].update(models=list(accs), recipes=["paper"], seeds=list(seeds))
    write_yaml(tmp_path / "params.yaml", cfg)
    for model, values in accs.items():
        for seed, acc in zip(seeds, values, strict=False):
            d = tmp_path / f"results/runs/{model}-paper-s{seed}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(
                json.dumps({"best_test_acc": acc, "final_test_acc": acc - 1, **(extra or {})})
            )
            (d / "metrics.csv").write_text(f"epoch,test_acc\n1,{acc - 1}\n2,{acc}\n")
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
            "--metrics",
            str(tmp_path / "metrics.json"),
            *[a for s in sets for a in ("--set", s)],
        ]
    )


def test_fabricated_runs_give_the_defined_verdicts(tmp_path):
    fabricate(tmp_path)
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
    diff, low, high = welch(ACCS["resnet50"], ACCS["vit"])
    assert (r.diff_pp, r.ci_low_pp, r.ci_high_pp, r.paper_diff_pp) == pytest.approx((diff, low, high, 17.38))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["claims"]["resnet50_vs_vit-paper"]["verdict"] == "reproduced"
    summary = pd.read_csv(tmp_path / "tables/summary.csv").set_index("model")
    assert summary.loc["vit", "best_test_acc_mean"] == pytest.approx(61.1666666, abs=1e-6)
    assert summary.loc["vit", "final_test_acc_mean"] == pytest.approx(60.1666666, abs=1e-6)


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
    """Issue 9.2: quick runs were collected and labelled as the paper profile."""
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
    (tmp_path / "results/runs/vit-paper-s1/summary.json").write_text('{"best_test_acc": 60}')
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "missing final_test_acc")
    (tmp_path / "results/runs/vit-paper-s1/summary.json").unlink()
    assert_one_line_error(collect(tmp_path), capsys.readouterr().err, "run vit-paper-s1 has no results")
