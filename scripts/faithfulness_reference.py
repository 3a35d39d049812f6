"""Snakemake entry for rule faithfulness_reference: the baseline's top-k cache over the text."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.faithfulness import build_reference  # noqa: E402
from quantstudy.gpus import lease  # noqa: E402
from quantstudy.records import check_inputs, quantize_record_path, recording_failure  # noqa: E402
from quantstudy.scripting import logged, workflow_root  # noqa: E402
from quantstudy.study import Faithfulness  # noqa: E402

log = snakemake.log[0]  # noqa: F821
out = snakemake.output  # noqa: F821
with (
    recording_failure(
        "faithfulness",
        out.json,
        arm=snakemake.params.baseline,  # noqa: F821
        log=log,
        attempt=int(snakemake.resources.attempt),  # noqa: F821
        retry=snakemake.params.retry,  # noqa: F821
        empty=[out.npz],
    ),
    logged(log),
):
    check_inputs(**{"baseline's quantize job": quantize_record_path(snakemake.input.model)})  # noqa: F821
    spec = Faithfulness.parse(snakemake.params.faithfulness, ("faithfulness",))  # noqa: F821
    with lease(snakemake.resources.gpu_mem_mb):  # noqa: F821
        build_reference(
            snakemake.input.model,  # noqa: F821
            spec,
            out.npz,
            out.json,
            root=workflow_root(snakemake),  # noqa: F821
        )
