# One training job per run (models x recipes x train_fractions x seeds). params.values holds
# exactly the params the run reads, so a change re-runs only that run. Threads come from
# runtime.threads; a GPU is requested only where a job can use one (pipeline.gpu_request).


wildcard_constraints:
    run=P.run_pattern(RUNS),


rule train:
    input:
        P.PREPARED,
        P.code_deps("train"),
    output:
        **P.RUN_OUTPUT,
    log:
        "logs/train/{run}.log",
    conda:
        "../envs/cnnvit.yaml"
    threads: PARAMS.runtime.threads
    resources:
        gpu=GPUS,
        runtime=lambda w: P.slurm_minutes(PARAMS, RUNS[w.run]),
    params:
        cmd=lambda w: P.command("train", RUNS[w.run]),
        values=lambda w: P.run_param_values(PARAMS.raw, RUNS[w.run]),
        sets=lambda w: P.set_flags(
            BASE, PARAMS.raw, P.run_param_keys(PARAMS.profile, RUNS[w.run])
        ),
    shell:
        "{params.cmd} --threads {threads} {params.sets} > {log} 2>&1"
