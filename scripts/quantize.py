"""Snakemake entry for rule quantize: build, save, reload and verify one arm."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.arms import parse_arm  # noqa: E402
from quantstudy.gpus import lease  # noqa: E402
from quantstudy.quantize import quantize_arm  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

with logged(snakemake.log[0]), lease(snakemake.resources.gpu_mem_mb):  # noqa: F821
    quantize_arm(
        parse_arm(snakemake.wildcards.arm, snakemake.params.arm),  # noqa: F821
        snakemake.input.source,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        root=Path(snakemake.scriptdir).parent,  # noqa: F821
    )
