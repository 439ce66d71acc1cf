"""The ``dense<d>`` family (CAASL's linear-Gaussian protocol) against its stated laws."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import stats

from causal_grpo.scm import is_dag
from causal_grpo.scm_families import (DENSE_PROTOCOL, FamilyConfig, GraphKind, dense_edge_prob,
                                      resolve_scm, sample_family)

N = 2000


@pytest.fixture(scope="module")
def draws():
    cfg = resolve_scm("dense10")
    keys = jax.random.split(jax.random.PRNGKey(7), N)
    return cfg, jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: sample_family(k, cfg)))(keys))


def test_dense_resolves_with_its_protocol():
    cfg = resolve_scm("dense10")
    assert cfg.kind is GraphKind.DENSE and cfg.d == 10 and cfg.name == "dense10"
    assert cfg.intervention_range == (-1.0, 1.0) == DENSE_PROTOCOL.intervention_range
    assert (cfg.protocol.n_observational, cfg.protocol.n_interventions) == (50, 10)
    # All parent sets up to d = 10; above it the posterior's default applies.
    assert cfg.max_indegree == 9 and resolve_scm("dense5").max_indegree == 4
    assert resolve_scm("dense12").max_indegree is None
    assert resolve_scm("er10").protocol is None and resolve_scm("er10").max_indegree is None
    assert resolve_scm("er10").intervention_range == (-2.0, 2.0)


def test_edge_probability_by_hand():
    assert dense_edge_prob(10) == pytest.approx(30 / 45)
    assert dense_edge_prob(20) == pytest.approx(60 / 190)
    assert dense_edge_prob(5) == 0.99          # 15 / 10 capped
    assert dense_edge_prob(3) == 0.99


def test_dense_draws_are_dags_with_3_edges_per_variable(draws):
    _, s = draws
    assert all(is_dag(a) for a in s.adj)
    edges = s.adj.sum(axis=(1, 2))
    # Edge count per graph is Binomial(45, 2/3): mean 30, variance 10; the mean of N draws
    # lies within 5 standard errors.
    assert abs(edges.mean() - 30.0) < 5 * math.sqrt(10 / N)
    assert abs(edges.var() - 10.0) < 1.5
    # In-degree beyond 3 is common (the reason the posterior must score all parent sets).
    assert (s.adj.sum(1).max(1) > 3).mean() > 0.9
    # Every unordered pair is an edge in one direction with the same probability.
    pair = (s.adj + np.swapaxes(s.adj, 1, 2))[:, np.triu_indices(10, 1)[0], np.triu_indices(10, 1)[1]]
    freq = pair.mean(0)
    assert np.all(np.abs(freq - 2 / 3) < 5 * math.sqrt((2 / 9) / N))


def test_dense_weights_have_variance_one_over_indegree(draws):
    _, s = draws
    indeg = s.adj.sum(1, keepdims=True)                        # (N, 1, d): in-degree of child
    z = (s.weights * np.sqrt(np.maximum(indeg, 1)))[s.adj != 0]   # ~ N(0, 1) if the law holds
    assert len(z) > 50_000
    assert abs(z.mean()) < 5 / math.sqrt(len(z))
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / len(z))
    # Raw weights of children with in-degree 1 vs 6: variances 1 and 1/6.
    w1 = s.weights[(s.adj != 0) & (indeg == 1)]
    w6 = s.weights[(s.adj != 0) & (indeg == 6)]
    assert w1.var() == pytest.approx(1.0, rel=0.15) and w6.var() == pytest.approx(1 / 6, rel=0.1)


def test_dense_noise_variance_is_inverse_gamma_10_1(draws):
    cfg, s = draws
    var = (s.noise_std.astype(np.float64) ** 2).reshape(-1)
    # InverseGamma(10, 1): mean 1/9, variance 1 / (81 * 8).
    assert abs(var.mean() - 1 / 9) < 5 * math.sqrt(1 / 648 / len(var))
    assert stats.kstest(var, stats.invgamma(10, scale=1.0).cdf).pvalue > 1e-3
    assert float(s.low[0]) == -1.0 and float(s.high[0]) == 1.0
    assert cfg.intervention_range == (-1.0, 1.0)


def test_dense_is_deterministic_per_key_and_pads():
    cfg = FamilyConfig(kind=GraphKind.DENSE, d=8, d_pad=11)
    k1, k2 = jax.random.PRNGKey(3), jax.random.PRNGKey(4)
    a, b, c = (jax.tree.map(np.asarray, sample_family(k, cfg)) for k in (k1, k1, k2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.weights, c.weights)
    assert np.all(a.adj[8:] == 0) and np.all(a.adj[:, 8:] == 0)
    np.testing.assert_array_equal(a.noise_std[8:], 1.0)
    np.testing.assert_array_equal(a.var_mask, np.arange(11) < 8)
    assert a.adj[:, int(a.target)].sum() >= 1


def test_the_protocol_reaches_the_episode_unless_flags_say_otherwise():
    from causal_grpo.errors import UserError
    from causal_grpo.surrogate import SurrogateConfig
    from causal_grpo.surrogate_bayes import AnalyticConfig
    from jobs.two_phase_training import episode_config

    dense, er = {"dense10": resolve_scm("dense10")}, {"er10": resolve_scm("er10")}
    ep = episode_config(dense, None, None, SurrogateConfig())
    assert (ep.n_observational, ep.n_interventions) == (50, 10)
    assert ep.surrogate.analytic.max_indegree == 9
    ep = episode_config(er, None, None, SurrogateConfig())
    assert (ep.n_observational, ep.n_interventions, ep.surrogate.analytic) == (30, 50, None)
    # Given flags win; an analytic config that is given is kept.
    ep = episode_config(dense, 20, 3, SurrogateConfig(analytic=AnalyticConfig(max_indegree=2)))
    assert (ep.n_observational, ep.n_interventions, ep.surrogate.analytic.max_indegree) == (20, 3, 2)
    # SCMs whose protocols differ need the flags.
    with pytest.raises(UserError, match="--n-observational"):
        episode_config(dense | er, None, 10, SurrogateConfig())
    # One posterior serves them all: er10 is not scored with dense10's in-degree 9.
    with pytest.raises(UserError, match=r"largest parent set \(dense10: 9, er10: 4\)"):
        episode_config(dense | er, 40, 10, SurrogateConfig())
    ep = episode_config(dense | er, 40, 10, SurrogateConfig(analytic=AnalyticConfig()))
    assert ep.n_observational == 40 and ep.surrogate.analytic.max_indegree == 4
    # dense8 scores every parent set (7) with dense10's 9 too: the exact DP takes k <= d - 1.
    both = {n: resolve_scm(n) for n in ("dense8", "dense10")}
    assert episode_config(both, None, None, SurrogateConfig()).surrogate.analytic.max_indegree == 9


def test_the_policys_lookahead_refits_with_the_episodes_in_degree(monkeypatch):
    """On dense6 (every parent set: in-degree 5) the Phase-2 policy selector refits the
    posterior for its lookahead with the episode's settings, as Phase 1 trained it, not the
    default in-degree 4: the sweep builds the selector with them and the selector refits so."""
    import jax.numpy as jnp

    from causal_grpo import active_learning as AL
    from causal_grpo import policy as pol
    from causal_grpo import sweep
    from causal_grpo.features import Buffer
    from causal_grpo.phase1 import Phase1Config, init_params
    from causal_grpo.surrogate import SurrogateConfig
    from jobs.two_phase_training import episode_config

    class Refit(Exception):
        pass

    seen = []

    def refit(key, obs, analytic=None):      # record the settings, skip the compute
        seen.append(analytic)
        raise Refit

    monkeypatch.setattr(pol, "refit_posterior", refit)
    episode = episode_config({"dense6": resolve_scm("dense6")}, None, None, SurrogateConfig())
    assert episode.surrogate.analytic.max_indegree == 5
    cfg = Phase1Config()
    handle = pol.PolicyHandle(pol.make_policy_selector(cfg.policy), init_params(cfg), "x",
                              cfg.policy)
    built = []
    real = sweep.make_batch_runner
    monkeypatch.setattr(sweep, "make_batch_runner",
                        lambda ep, d, selector=None: built.append(selector) or real(ep, d, selector))
    sweep._RUNNERS.clear()
    sweep._runner(episode, AL.Method.GRPO_ACTIVE, 6, handle)
    scm = sample_family(jax.random.PRNGKey(3), resolve_scm("dense6"))
    obs = AL.observe(scm, Buffer.empty(4, 6), jnp.asarray(0), jnp.zeros((6, 6)))
    with pytest.raises(Refit):
        built[-1](jax.random.PRNGKey(0), obs, handle.params)
    assert seen == [episode.surrogate.analytic]
    sweep._RUNNERS.clear()
