"""Snakemake entry for rule benchmark: speed and memory of one arm beside the baseline, one JSON."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.benchmark import record, run_benchmark  # noqa: E402
from quantstudy.gpus import lease  # noqa: E402
from quantstudy.records import check_inputs, quantize_record_path, recording_failure  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

log = snakemake.log[0]  # noqa: F821
with (
    recording_failure(
        "benchmark",
        snakemake.output[0],  # noqa: F821
        arm=snakemake.wildcards.arm,  # noqa: F821
        log=log,
        attempt=int(snakemake.resources.attempt),  # noqa: F821
        retry=snakemake.params.retry,  # noqa: F821
    ),
    logged(log),
):
    check_inputs(
        **{
            "arm's quantize job": quantize_record_path(snakemake.input.model),  # noqa: F821
            "baseline's quantize job": quantize_record_path(snakemake.input.baseline),  # noqa: F821
        }
    )
    with lease(snakemake.resources.gpu_mem_mb, exclusive=True):  # noqa: F821
        params = snakemake.params  # noqa: F821
        result = run_benchmark(
            snakemake.input.model,  # noqa: F821
            snakemake.input.baseline,  # noqa: F821
            dict(params.settings),
            device=getattr(params, "device", None),
            arm_name=getattr(snakemake.wildcards, "arm", None),  # noqa: F821
            baseline_name=getattr(params, "baseline", None),
        )
        record.write(snakemake.output[0], result)  # noqa: F821
