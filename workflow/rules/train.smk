# One training job per batch: the seeds of one model x recipe x fraction, trained in turn in one
# process (runtime.group_seeds: false, one job per run). params.values holds exactly the params
# the batch reads, so a change re-runs only that batch. Threads come from runtime.threads; a GPU
# slot is requested only where a job can use one (cnnvit.dag.snakemake).


wildcard_constraints:
    batch=S.name_pattern(BATCHES),


rule train:
    input:
        S.inputs("train", PARAMS),
    output:
        **S.outputs("train", PARAMS),
    log:
        S.log("train"),
    conda:
        "../envs/cnnvit.yaml"
    threads: PARAMS.runtime.threads
    resources:
        gpu=GPUS,
        runtime=lambda w: S.slurm_minutes(PARAMS, BATCHES[w.batch]),
        mem_mb=PARAMS.active.mem_mb,
    params:
        cmd=lambda w: S.command("train", BATCHES[w.batch]),
        values=lambda w: S.param_values("train", PARAMS, BATCHES[w.batch]),
    shell:
        "{params.cmd} --threads {threads} > {log} 2>&1"


# The corruption benchmark and the attention distances of a batch's trained runs: a change to
# their settings re-runs these, never the training.
rule evaluate:
    input:
        lambda w: S.inputs("evaluate", PARAMS, batch=BATCHES[w.batch]),
    output:
        **S.outputs("evaluate", PARAMS),
    log:
        S.log("evaluate"),
    conda:
        "../envs/cnnvit.yaml"
    threads: PARAMS.runtime.threads
    resources:
        gpu=GPUS,
    params:
        cmd=lambda w: S.command("evaluate", BATCHES[w.batch]),
        values=lambda w: S.param_values("evaluate", PARAMS, BATCHES[w.batch]),
    shell:
        "{params.cmd} > {log} 2>&1"


# Timings: it claims every core, so that nothing else runs while it measures.
rule cost:
    input:
        S.inputs("cost", PARAMS),
    output:
        **S.outputs("cost", PARAMS),
    log:
        S.log("cost"),
    conda:
        "../envs/cnnvit.yaml"
    threads: S.alone_cores(workflow, PARAMS)
    resources:
        gpu=GPUS,
    params:
        values=S.param_values("cost", PARAMS),
    shell:
        S.command("cost") + " > {log} 2>&1"
