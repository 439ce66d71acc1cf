"""Per-variable features: one schema for bootstrap and surrogate sources, with hand-made cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo.features import (FEATURE_NAMES, N_FEATURES, BootstrapConfig, Buffer,
                                  bootstrap_noise, bootstrap_probs, features_from_probs)

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
# 0 -> 1 -> 3 <- 2, target 3; a fifth, padding variable
ADJ = jnp.zeros((5, 5)).at[0, 1].set(1).at[1, 3].set(1).at[2, 3].set(1)
MASK = jnp.array([True, True, True, True, False])


def empty_buffer(interventions=()):
    buf = Buffer.empty(10, 5)
    for row, j in enumerate(interventions):
        buf = buf.write(row, jnp.zeros(5), jnp.arange(5) == j)
    return buf


def test_features_of_a_certain_graph_by_hand():
    f = np.asarray(features_from_probs(ADJ, empty_buffer((0, 0, 2)), jnp.asarray(3), MASK))
    assert f.shape == (5, N_FEATURES)
    np.testing.assert_allclose(f[:, COL["parent_of_target"]], [0, 1, 1, 0, 0])
    np.testing.assert_allclose(f[:, COL["child_of_target"]], 0)
    np.testing.assert_allclose(f[:, COL["out_degree"]], [1 / 3, 1 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(f[:, COL["in_degree"]], [0, 1 / 3, 0, 2 / 3, 0])
    for c in ("edge_uncertainty", "unoriented"):
        np.testing.assert_allclose(f[:, COL[c]], 0, atol=1e-6)       # certain graph
    np.testing.assert_allclose(f[:, COL["intervened_frac"]], [2 / 3, 0, 1 / 3, 0, 0])
    np.testing.assert_allclose(f[:, COL["is_target"]], [0, 0, 0, 1, 0])
    np.testing.assert_allclose(f[:4, COL["progress"]], 3 / 13)
    np.testing.assert_allclose(f[4], 0)                                # padding is all zero


def test_one_unoriented_pair_by_hand():
    d = 4
    probs = jnp.zeros((d, d)).at[0, 1].set(0.5).at[1, 0].set(0.5)
    f = np.asarray(features_from_probs(probs, Buffer.empty(4, d), jnp.asarray(d - 1),
                                       jnp.ones(d, bool)))
    np.testing.assert_allclose(f[:2, COL["unoriented"]], 1.0 / (d - 1), rtol=1e-6)
    # pair {0, 1} has states (0.5, 0.5, 0): entropy log 2, normalised by log 3, mean over 3 others
    np.testing.assert_allclose(f[:2, COL["edge_uncertainty"]], math.log(2) / math.log(3) / (d - 1),
                               rtol=1e-5)
    np.testing.assert_allclose(f[2:, COL["unoriented"]], 0, atol=1e-6)
    np.testing.assert_allclose(f[:2, COL["out_degree"]], 0.5 / (d - 1), rtol=1e-6)


def test_bootstrap_without_noise_equals_a_surrogate_certain_of_the_truth():
    noise = bootstrap_noise(jax.random.PRNGKey(0), 5)
    buf = empty_buffer((1,))
    boot = bootstrap_probs(ADJ, noise, jnp.asarray(0), BootstrapConfig(lam0=0.0))
    np.testing.assert_allclose(boot, ADJ)
    np.testing.assert_allclose(features_from_probs(boot, buf, jnp.asarray(3), MASK),
                               features_from_probs(ADJ, buf, jnp.asarray(3), MASK))


@pytest.mark.parametrize("step", [0, 5, 30])
def test_bootstrap_noise_decays_on_the_documented_schedule(step):
    cfg = BootstrapConfig(lam0=0.5, tau=10.0)
    noise = bootstrap_noise(jax.random.PRNGKey(1), 5)
    lam = 0.5 * math.exp(-step / 10.0)
    expect = (1 - lam) * np.asarray(ADJ) + lam * np.asarray(noise) * (1 - np.eye(5))
    np.testing.assert_allclose(bootstrap_probs(ADJ, noise, jnp.asarray(step), cfg), expect,
                               rtol=1e-5, atol=1e-6)
    # and the noise is static within an episode: the same key gives the same matrix
    np.testing.assert_array_equal(noise, bootstrap_noise(jax.random.PRNGKey(1), 5))
