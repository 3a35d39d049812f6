"""Snakemake entry for rule compare: paired statistics, decision table and summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy import compare  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402
from quantstudy.study import Analysis  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    compare.run(
        samples_files=snakemake.input.samples,  # noqa: F821
        eval_files=snakemake.input.evals,  # noqa: F821
        model_dirs=snakemake.input.models,  # noqa: F821
        bench_files=snakemake.input.bench,  # noqa: F821
        arms=snakemake.params.arms,  # noqa: F821
        tasks=snakemake.params.tasks,  # noqa: F821
        baseline=snakemake.params.baseline,  # noqa: F821
        analysis=Analysis.parse(snakemake.params.analysis, ("analysis",)),  # noqa: F821
        study=snakemake.wildcards.study,  # noqa: F821
        out=dict(snakemake.output.items()),  # noqa: F821
        faithfulness_files=list(snakemake.input.faithfulness) or None,  # noqa: F821
    )
