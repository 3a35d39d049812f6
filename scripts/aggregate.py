"""Snakemake entry for rule aggregate: the study's tables from every job's outputs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy import aggregate  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    quant = aggregate.load_quantize_records(snakemake.input.models)  # noqa: F821
    results = aggregate.collect_results(snakemake.input.evals, quant)  # noqa: F821
    memory = aggregate.memory_table(quant, snakemake.params.baseline)  # noqa: F821
    results.to_csv(snakemake.output.results, index=False)  # noqa: F821
    memory.to_csv(snakemake.output.memory, index=False)  # noqa: F821
    Path(snakemake.output.summary).write_text(  # noqa: F821
        aggregate.summary_markdown(
            results,
            memory,
            snakemake.wildcards.study,
            snakemake.params.baseline,  # noqa: F821
        )
    )
