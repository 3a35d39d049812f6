"""Snakemake entry for rule faithfulness: one arm against the baseline's cached top-k."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.faithfulness import compare_arm  # noqa: E402
from quantstudy.gpus import lease  # noqa: E402
from quantstudy.records import check_inputs, quantize_record_path, recording_failure  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

log = snakemake.log[0]  # noqa: F821
inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
with (
    recording_failure(
        "faithfulness",
        out.json,
        arm=snakemake.wildcards.arm,  # noqa: F821
        log=log,
        attempt=int(snakemake.resources.attempt),  # noqa: F821
        retry=params.retry,
        empty=[out.tokens],
    ),
    logged(log),
):
    check_inputs(
        **{
            "quantize job": quantize_record_path(inp.model),
            "baseline's reference job": inp.reference,
        }
    )
    with lease(snakemake.resources.gpu_mem_mb):  # noqa: F821
        compare_arm(
            inp.model,
            snakemake.wildcards.arm,  # noqa: F821
            inp.reference_npz,
            inp.reference,
            params.batch_size,
            params.alpha,
            out.json,
            out.tokens,
        )
