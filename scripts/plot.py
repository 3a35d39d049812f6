"""Snakemake entry for rule report: the study's figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import pandas as pd  # noqa: E402

from quantstudy import plots  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    results = pd.read_csv(snakemake.input.results)  # noqa: F821
    memory = pd.read_csv(snakemake.input.memory)  # noqa: F821
    plots.score_vs_memory(results, memory, snakemake.output.score_vs_memory)  # noqa: F821
