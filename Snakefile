from snakemake.utils import min_version

min_version("9.0")


# The real study; `--configfile config/<study>.yaml` replaces it (never merges two studies' arms).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/quantize.smk"
include: "rules/evaluate.smk"
include: "rules/benchmark.smk"
include: "rules/faithfulness.smk"
include: "rules/aggregate.smk"
include: "rules/compare.smk"
include: "rules/report.smk"


onstart:
    set_job_attempts()


rule all:
    default_target: True
    input:
        get_final_output(),
