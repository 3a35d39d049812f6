"""Snakemake entry for rule aggregate_benchmarks: tables/benchmark.csv from every bench JSON."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.aggregate import collect_benchmarks  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    collect_benchmarks(snakemake.input).to_csv(snakemake.output[0], index=False)  # noqa: F821
