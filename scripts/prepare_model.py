"""Snakemake entry for rule prepare_model: the source as one safetensors directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.scripting import logged  # noqa: E402
from quantstudy.sources import prepare_model  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    prepare_model(
        snakemake.params.model,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        download_dir=snakemake.input.get("download"),  # noqa: F821
        root=Path(snakemake.scriptdir).parent,  # noqa: F821
    )
