# cnnvit: CNN vs ViT vs hybrid on CIFAR-10. Run `snakemake --cores all`; see README.md.
# The stages, their commands, inputs, outputs, logs and params come from src/cnnvit/dag/stages.py,
# the one description of the pipeline (dvc.yaml is generated from it).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT,
