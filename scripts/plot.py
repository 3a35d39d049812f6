"""Snakemake entry for rule report: the study's figures and its provenance page."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy import plots, report  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    plots.draw_report_figures(
        scores_csv=inp.scores,
        comparisons_csv=inp.comparisons,
        decision_csv=inp.decision,
        model_dirs=inp.models,
        bench_files=inp.bench if params.benchmarked else None,
        arms=params.arms,
        baseline=params.baseline,
        out=dict(out.items()),
    )
    report.write_provenance(
        source_dir=inp.source,
        model_dirs=inp.models,
        eval_files=inp.evals,
        bench_files=inp.bench,
        config=snakemake.config,  # noqa: F821
        study=snakemake.wildcards.study,  # noqa: F821
        out_html=out.provenance,
        out_csv=out.provenance_csv,
    )
