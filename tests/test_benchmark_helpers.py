"""Helpers of benchmarks/ that a reported number depends on."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from density_precision import round_to_tf32


def test_round_to_tf32_is_nearest_even_on_an_11_bit_significand():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(10_000) * 10.0 ** rng.integers(-5, 5, 10_000),
            [1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 0.0],
        ]
    ).astype(np.float32)
    m, e = np.frexp(x.astype(np.float64))  # x = m·2^e, |m| in [0.5, 1)
    want = np.ldexp(np.rint(m * 2**11) / 2**11, e)  # np.rint rounds half to even
    got = round_to_tf32(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert got[-4] == 1.0 and got[-3] == 1 + 2**-9 and got[-2] == -1.0  # the ties go to even
