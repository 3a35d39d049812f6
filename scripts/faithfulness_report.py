"""Snakemake entry for rule faithfulness_report: the agreement table, its page and figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy import plots  # noqa: E402
from quantstudy.faithfulness import write_report_table  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    table = write_report_table(
        inp.arms, inp.models, params.arms, params.baseline, out.table, out.page,
        snakemake.wildcards.study,  # noqa: F821
    )  # fmt: skip
    plots.draw_faithfulness_figures(table, inp.arms, params.arms, dict(out.items()))
