"""Snakemake entry for rule prepare_model: the source as one safetensors directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.config import typed  # noqa: E402
from quantstudy.preflight import check_group_sizes  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402
from quantstudy.sources import prepare_model  # noqa: E402
from quantstudy.study import Model  # noqa: E402

root = Path(snakemake.scriptdir).parent  # noqa: F821
with logged(snakemake.log[0]):  # noqa: F821
    # A hub model's layers are known only now: refuse a group size that does not fit before
    # anything is written and before any quantize job starts. The arms are read from the config,
    # not params, because the source does not depend on them (an arm edit must not rebuild it).
    check_group_sizes(typed(snakemake.config), root)  # noqa: F821
    prepare_model(
        Model.parse(snakemake.params.model, ("model",)),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        download_dir=snakemake.input.get("download"),  # noqa: F821
        root=root,
    )
