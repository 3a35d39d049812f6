"""Snakemake entry for rule download_model: fetch a hub snapshot."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.scripting import logged  # noqa: E402
from quantstudy.sources import download_model  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    download_model(snakemake.params.repo_id, snakemake.params.revision, snakemake.output[0])  # noqa: F821
