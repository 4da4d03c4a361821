# One training job per model x recipe x seed (mirrors the train matrix stage of dvc.yaml).
# params.cfg holds exactly that run's config, so a params change re-runs only that run.
# resources gpu=1 plus the profile's `resources: [gpu=1]` keep one training per GPU.


wildcard_constraints:
    model="[a-z][a-z0-9_]*",
    recipe="[a-z][a-z0-9_]*",
    seed=r"\d+",


rule train:
    input:
        PREPARED,
    output:
        metrics="results/runs/{model}-{recipe}-s{seed}/metrics.csv",
        summary="results/runs/{model}-{recipe}-s{seed}/summary.json",
    conda:
        "../envs/cnnvit.yaml"
    log:
        "logs/train/{model}-{recipe}-s{seed}.log",
    params:
        cfg=lambda w: stage_params(config, "train", model=w.model, recipe=w.recipe),
        sets=lambda w: cli_sets("train", model=w.model, recipe=w.recipe),
        data_dir=lambda w, input: str(Path(input[0]).parent),
        out_dir=lambda w, output: str(Path(output.metrics).parent),
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "cnnvit train --model {wildcards.model} --recipe {wildcards.recipe} "
        "--seed {wildcards.seed} --data-dir {params.data_dir} --out-dir {params.out_dir} "
        "--ckpt-dir results/checkpoints --threads {threads} {params.sets} > {log} 2>&1"
