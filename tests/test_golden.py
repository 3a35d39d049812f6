"""The tiny study's tables, recomputed from its frozen records, equal the frozen tables.

See tests/golden.py: a refactoring of the analysis (statistics, decision policy, readers of the
records) must leave scores, comparisons and decision as they were, on any CPU.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests import golden


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory):
    return golden.compute(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("table", golden.TABLES)
def test_the_tiny_studys_tables_are_unchanged(recomputed, table):
    frozen = pd.read_csv(golden.GOLDEN / "tables" / f"{table}.csv")
    now = pd.read_csv(recomputed[table])
    assert list(now.columns) == list(frozen.columns)
    pd.testing.assert_frame_equal(now, frozen, check_exact=False, rtol=1e-9, atol=1e-12)


def test_the_frozen_study_is_the_whole_tiny_study():
    """Every configured arm and task has its records, so the test covers every method."""
    s = golden.study()
    assert set(s["arms"]) == {"fp32", "int8", "nf4_dq", "fp4", "gptq", "awq"}
    assert s["tasks"] == ["demo_capitals", "demo_passage_qa"]
    for files in golden.inputs().values():
        assert files and all(f.exists() for f in files)
