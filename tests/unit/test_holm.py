"""results.holm against hand-computed Holm-Bonferroni adjustments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from causal_grpo.results import holm


def test_holm_hand_case():
    # Sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.06.
    got = holm([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(got, [0.06, 0.04, 0.06, 0.06])


def test_holm_caps_at_one_and_keeps_order():
    np.testing.assert_allclose(holm([0.5, 0.001, 0.3]), [0.6, 0.003, 0.6])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])
    assert holm([0.2]).tolist() == [0.2]


def test_holm_skips_nan():
    got = holm([0.01, float("nan"), 0.04])     # m = 2: 0.02, 0.04
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
