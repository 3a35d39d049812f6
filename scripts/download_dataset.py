"""Snakemake entry for rule download_datasets: pre-fetch a hub dataset split into the cache."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.arms import Calibration  # noqa: E402
from quantstudy.provenance import write_json  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402
from quantstudy.sources import download_dataset  # noqa: E402

with logged(snakemake.log[0]):  # noqa: F821
    calib = Calibration.parse(snakemake.params.spec, ("calibration",))  # noqa: F821
    record = download_dataset(calib.dataset, calib.config_name, calib.split)
    write_json(snakemake.output[0], record)  # noqa: F821
