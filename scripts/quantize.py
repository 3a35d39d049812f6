"""Snakemake entry for rule quantize: build, save, reload and verify one arm."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.arms import parse_arm  # noqa: E402
from quantstudy.gpus import lease  # noqa: E402
from quantstudy.quantize import quantize_arm  # noqa: E402
from quantstudy.records import quantize_record_path, recording_failure  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

out, log = snakemake.output[0], snakemake.log[0]  # noqa: F821
with (
    recording_failure(
        "quantize",
        quantize_record_path(out),
        arm=snakemake.wildcards.arm,  # noqa: F821
        log=log,
        attempt=int(snakemake.resources.attempt),  # noqa: F821
        retry=snakemake.params.retry,  # noqa: F821
        clear=out,
    ),
    logged(log),
    lease(snakemake.resources.gpu_mem_mb),  # noqa: F821
):
    quantize_arm(
        parse_arm(snakemake.wildcards.arm, snakemake.params.arm),  # noqa: F821
        snakemake.input.source,  # noqa: F821
        out,
        root=Path(snakemake.scriptdir).parent,  # noqa: F821
    )
