# One training job per run (models x recipes x train_fractions x seeds). params.values holds
# exactly the params the run reads, so a change re-runs only that run. Threads come from
# runtime.threads; a GPU is requested only where a job can use one (cnnvit.dag.snakemake).


wildcard_constraints:
    run=S.run_pattern(RUNS),


rule train:
    input:
        S.inputs("train", PARAMS),
    output:
        **S.outputs("train"),
    log:
        S.log("train"),
    conda:
        "../envs/cnnvit.yaml"
    threads: PARAMS.runtime.threads
    resources:
        gpu=GPUS,
        runtime=lambda w: S.slurm_minutes(PARAMS, RUNS[w.run]),
        mem_mb=PARAMS.active.mem_mb,
    params:
        cmd=lambda w: S.command("train", RUNS[w.run]),
        values=lambda w: S.param_values("train", PARAMS, RUNS[w.run]),
    shell:
        "{params.cmd} --threads {threads} > {log} 2>&1"


# The corruption benchmark and the attention distances of one trained run: a change to their
# settings re-runs these, never the training.
rule evaluate:
    input:
        S.inputs("evaluate", PARAMS),
    output:
        **S.outputs("evaluate"),
    log:
        S.log("evaluate"),
    conda:
        "../envs/cnnvit.yaml"
    threads: PARAMS.runtime.threads
    params:
        cmd=lambda w: S.command("evaluate", RUNS[w.run]),
        values=lambda w: S.param_values("evaluate", PARAMS, RUNS[w.run]),
    shell:
        "{params.cmd} > {log} 2>&1"


# Timings: it claims every core, so that nothing else runs while it measures.
rule cost:
    input:
        S.inputs("cost", PARAMS),
    output:
        **S.outputs("cost"),
    log:
        S.log("cost"),
    conda:
        "../envs/cnnvit.yaml"
    threads: S.all_cores(workflow)
    params:
        values=S.param_values("cost", PARAMS),
    shell:
        S.command("cost") + " > {log} 2>&1"
