"""Snakemake entry for rule analyse_failures: how each arm fails against the baseline."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy import failures  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402
from quantstudy.study import Analysis  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    failures.run(
        samples_files=snakemake.input.samples,  # noqa: F821
        arms=snakemake.params.arms,  # noqa: F821
        tasks=snakemake.params.tasks,  # noqa: F821
        baseline=snakemake.params.baseline,  # noqa: F821
        analysis=Analysis.parse(snakemake.params.analysis, ("analysis",)),  # noqa: F821
        study=snakemake.wildcards.study,  # noqa: F821
        out=dict(snakemake.output.items()),  # noqa: F821
    )
