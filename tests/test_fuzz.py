"""A bounded fuzz run of the RecordIO and `.bin` readers (benchmarks/fuzz.py, fixed seed): every
mutated file is either read correctly or refused with one line naming it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fuzz import run_fuzz


@pytest.mark.slow
def test_2000_mutated_files_no_untyped_error_hang_crash_or_wrong_acceptance():
    result = run_fuzz(2000, seed=0, workers=2, timeout=20.0)
    for family, counts in result["counts"].items():
        assert sum(counts.values()) == 1000
        bad = {k: counts[k] for k in ("accepted_wrong", "untyped_exception", "hang", "crash") if counts[k]}
        assert not bad, (family, bad, result["examples"][family])
        assert counts["typed_error"] > 500 and counts["accepted_valid"] > 50  # the mutations do reach the readers
