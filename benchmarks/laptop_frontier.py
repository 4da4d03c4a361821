"""Benchmark companion: the laptop preset's frontier, read from a finished laptop run.

    uv run python benchmarks/laptop_frontier.py PROJECT --wall-min M

PROJECT is the project benchmarks/laptop.sh ran in (it prints its path); M its measured wall
minutes. Nothing is trained. Prints, in Markdown:

1. each model's mean test accuracy (over seeds) after each epoch: what a training stopped there
   would have reached, at about that share of the pipeline's wall (training is most of it);
2. each claim's ``mde_pp`` (80% power at the claim's Bonferroni level, as claims.csv) with the
   first n of the run's seeds, measured from their predictions for n = 2 .. all, then projected to
   more seeds with the same noise per seed and per test image (``Difference.scaled``), against the
   wall minutes that many seeds take at this run's minutes per seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cnnvit.config.load import load_params
from cnnvit.paper import CLAIMS
from cnnvit.stages.collect import load_run
from cnnvit.stats import predictions as P
from cnnvit.stats.claims import FULL_TEST_SET, claims_table, difference

MORE_SEEDS = (8, 10, 15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--wall-min", type=float, required=True, help="the laptop run's measured wall minutes")
    args = ap.parse_args()
    params = load_params(args.project / ".snakemake/cnnvit/params.yaml")
    metric, margin = params.analysis.metric, params.analysis.close_margin_pp
    runs_dir = args.project / "results/runs"
    loaded = {(r.model, r.recipe, r.seed): load_run(params, r, runs_dir) for r in params.all_runs()}
    long = pd.concat([x[0] for x in loaded.values()], ignore_index=True)
    test = long[(long.split == "test") & (long.metric == "acc")]
    by_epoch = test.groupby(["model", "epoch"]).value.mean().unstack()
    epochs = list(by_epoch.columns)
    print(f"| epoch | {' | '.join(str(e) for e in epochs)} |\n|---|{'---:|' * len(epochs)}")
    for model, row in by_epoch.iterrows():
        print(f"| {model} | {' | '.join(f'{v:.1f}' for v in row)} |")

    seeds = sorted(params.runs.seeds)
    tested = [c for c in CLAIMS if c.id in params.analysis.claims]
    per_seed = args.wall_min / len(seeds)
    right = {k: P.correct(v[2], metric) for k, v in loaded.items()}
    final = {k: P.correct(v[2], "final") for k, v in loaded.items()}
    rows: dict[str, dict[int, str]] = {c.id: {} for c in tested}
    for n in range(2, len(seeds) + 1):
        keep = set(seeds[:n])
        sub = {k: v for k, v in right.items() if k[2] in keep}
        table = claims_table(tested, params.runs.recipes, sub, {k: final[k] for k in sub}, margin, metric, len(tested))
        for c in table.itertuples():
            rows[c.claim_id][n] = f"{c.mde_pp:.2f} ({c.verdict})"
    levels = {c.claim_id: c.level for c in table.itertuples()}
    for c in tested:
        d = difference(right, c.a, c.b, params.runs.recipes[0])
        for n in MORE_SEEDS:
            rows[c.id][n] = f"{d.scaled(n, FULL_TEST_SET).mde(levels[c.id]):.2f} (projected)"
    counts = sorted({n for r in rows.values() for n in r})
    print(f"\n| seeds a model | {' | '.join(str(n) for n in counts)} |\n|---|{'---:|' * len(counts)}")
    print(f"| wall minutes | {' | '.join(f'{n * per_seed:.0f}' for n in counts)} |")
    for claim, r in rows.items():
        print(f"| {claim} mde_pp | {' | '.join(r[n] for n in counts)} |")


if __name__ == "__main__":
    main()
