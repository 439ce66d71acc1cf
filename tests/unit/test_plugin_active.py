"""``plugin_active``: the sweep's greedy plug-in chooser acts at the policy's acting draws."""

from __future__ import annotations

import functools

import numpy as np

from causal_grpo import active_learning as AL
from causal_grpo.policy import auto_lookahead_draws
from causal_grpo.scm_families import resolve_scm
from causal_grpo.sweep import Batch, SweepConfig, cell_batch, run_batch


def test_plugin_active_is_the_plugin_chooser_at_auto_draws():
    """Through the sweep, ``plugin_active`` with draws "auto" makes the choices of
    make_plugin_gain_selector with auto_lookahead_draws(d) draws (8 at d = 5) on the same
    cells, and records the same metrics."""
    episode = AL.EpisodeConfig(n_observational=20, n_interventions=3, lookahead_draws="auto")
    cfg = SweepConfig(scms=("easy",), methods=(AL.Method.PLUGIN,), seeds=2, episode=episode,
                      base_seed=5000, batch_size=2)
    got = run_batch(Batch("easy", AL.Method.PLUGIN, (0, 1)), cfg)

    src = resolve_scm("easy")
    scms, keys = cell_batch(src, 5000, (0, 1))
    assert auto_lookahead_draws(5) == 8
    chooser = functools.partial(AL.make_plugin_gain_selector, n_draws=8)
    want = AL.make_reference_runner(episode, 5, chooser)(keys, scms).record
    np.testing.assert_array_equal(got["variable"], np.asarray(want.variable))
    np.testing.assert_allclose(got["value"], np.asarray(want.value))
    np.testing.assert_allclose(got["f1"], np.asarray(want.f1))
    np.testing.assert_allclose(got["auprc"], np.asarray(want.auprc), rtol=1e-6)
    assert np.all(got["variable"][:, 1:] >= 0) and np.all(got["variable"][:, 1:] != src.target)
    assert set(np.unique(got["value"][:, 1:])) <= {-2.0, 2.0}


def test_the_untrained_policys_mode_is_plugin_active():
    """The policy starts as the plug-in chooser: its learned logits are 0 at initialisation and
    its lookahead input comes from the same key, so acting on its mode it makes exactly
    ``plugin_active``'s choices on the same cells (what makes the trained policy's paired
    comparison with the chooser measure what training changed, not outcome-draw noise)."""
    from causal_grpo.phase1 import Phase1Config, init_params
    from causal_grpo.policy import make_policy_selector
    episode = AL.EpisodeConfig(n_observational=20, n_interventions=4, lookahead_draws="auto")
    cfg = SweepConfig(scms=("easy",), methods=(AL.Method.PLUGIN,), seeds=3, episode=episode,
                      base_seed=6000, batch_size=3)
    got = run_batch(Batch("easy", AL.Method.PLUGIN, (0, 1, 2)), cfg)

    scms, keys = cell_batch(resolve_scm("easy"), 6000, (0, 1, 2))
    p1 = Phase1Config()
    mode = make_policy_selector(p1.policy, greedy=True, lookahead_draws="auto")
    run = AL.make_batch_runner(episode, 5, mode)
    want = run(keys, scms, init_params(p1), AL.method_id(AL.Method.GRPO_ACTIVE)).record
    np.testing.assert_array_equal(got["variable"], np.asarray(want.variable))
    np.testing.assert_allclose(got["value"], np.asarray(want.value))
    np.testing.assert_allclose(got["f1"], np.asarray(want.f1))
    assert len(np.unique(got["variable"][:, 1:])) > 1


def test_method_ids_and_auprc_in_the_record():
    assert AL.method_id(AL.Method.PLUGIN) == 0 and not AL.Method.PLUGIN.needs_policy
    assert "auprc" in AL.StepRecord._fields


def test_the_sampled_policys_noise_is_not_the_lookaheads():
    """The sampled value bin of variable b is independent of the lookahead's simulated outcome
    noise for b (both drawn under the selector's key): with the stream shared, the bin landed
    where that noise was high (mean +1.25 over 400 keys on ``medium``)."""
    import jax
    import jax.numpy as jnp

    from causal_grpo.networks import PolicyConfig, dummy_input, make_policy
    from causal_grpo.policy import make_policy_selector
    from causal_grpo.scm_families import medium
    from causal_grpo.surrogate import SurrogateConfig, make_surrogate

    scm = medium().to_scm()
    d, cfg = scm.d, PolicyConfig()
    params = make_policy(cfg).init(jax.random.PRNGKey(0), dummy_input(cfg, d, 40))
    sur = make_surrogate(SurrogateConfig(), d, 40)
    st = AL.start_episode(jax.random.PRNGKey(1), scm, sur, 30, 40, 10)
    obs = AL.observe(scm, st.buffer, jnp.asarray(0), sur.edge_probs(st.state))
    select = make_policy_selector(cfg, greedy=False, lookahead_draws=1)
    bins = jnp.linspace(obs.low, obs.high, cfg.n_bins)

    @jax.jit
    @jax.vmap
    def one(key):
        b = jnp.argmin(jnp.abs(bins - select(key, obs, params).value))
        return b, jax.random.normal(AL.lookahead_key(key), (d,))

    b, eps = map(np.asarray, one(jax.random.split(jax.random.PRNGKey(42), 400)))
    seen = b < d
    assert seen.sum() > 200
    assert abs(eps[seen, b[seen]].mean()) < 0.25          # independent: 0 +- 0.07


def _medium_state():
    import jax
    import jax.numpy as jnp

    from causal_grpo.networks import PolicyConfig, dummy_input, make_policy
    from causal_grpo.scm_families import medium
    from causal_grpo.surrogate import SurrogateConfig, make_surrogate

    scm = medium().to_scm()
    cfg = PolicyConfig()
    params = make_policy(cfg).init(jax.random.PRNGKey(0), dummy_input(cfg, scm.d, 40))
    sur = make_surrogate(SurrogateConfig(), scm.d, 40)
    st = AL.start_episode(jax.random.PRNGKey(1), scm, sur, 30, 40, 10)
    obs = AL.observe(scm, st.buffer, jnp.asarray(0), sur.edge_probs(st.state))
    return scm, cfg, params, sur, st.state, obs


def test_selectors_refit_the_posterior_from_their_own_stream(monkeypatch):
    """The policy's lookahead and ``plugin_active`` refit the posterior to their observation
    from ``refit_key(key)``, both the same. With the selector's key itself, ``split(key)[1]``
    was the lookahead's outcome key: the neural surrogate's initial weights were the simulated
    outcomes' noise itself (``plugin_active --surrogate neural``), and order MCMC's starting
    orders came from that key's splits."""
    import jax

    import causal_grpo.policy as pol

    scm, cfg, params, sur, state, obs = _medium_state()
    seen = []

    def init(key, var_mask):
        jax.debug.callback(lambda k: seen.append(np.asarray(k)), key)
        return sur.init(key, var_mask)

    spy = sur._replace(init=init)
    monkeypatch.setattr(pol, "make_analytic_surrogate", lambda *a: spy)
    key = jax.random.PRNGKey(3)
    jax.block_until_ready(AL.make_plugin_selector(spy, 1)(key, obs))
    jax.block_until_ready(pol.refit_posterior(key, obs))
    want = np.asarray(AL.refit_key(key))
    assert len(seen) == 2 and all(np.array_equal(k, want) for k in seen)
    look = np.asarray(AL.lookahead_key(key))
    assert not any(np.array_equal(np.asarray(k), look)
                   for k in (AL.refit_key(key), *jax.random.split(AL.refit_key(key))))


def test_the_oracle_refits_and_simulates_from_the_plugin_choosers_keys(monkeypatch):
    """The expected-gain oracle (the ceiling's truth-knowing reference) refits from
    ``refit_key(key)`` and simulates outcomes from ``lookahead_key(key)``, as the plug-in
    chooser does: one key per purpose, and on the same cell the two draw the same outcome
    noise. It used the selector's key for both, whose ``split(key)[i]`` words XOR to the
    outcome normals' raw bits."""
    import jax

    import jax.numpy as jnp

    from causal_grpo.scm_families import easy
    from causal_grpo.surrogate import SurrogateConfig, make_surrogate

    scm = easy().to_scm()
    sur = make_surrogate(SurrogateConfig(), scm.d, 20)
    st = AL.start_episode(jax.random.PRNGKey(1), scm, sur, 15, 20, 5)
    obs = AL.observe(scm, st.buffer, jnp.asarray(0), sur.edge_probs(st.state))
    inits, outcomes = [], []

    def init(key, var_mask):
        jax.debug.callback(lambda k: inits.append(np.asarray(k)), key)
        return sur.init(key, var_mask)

    real = AL.lookahead_gains

    def lookahead_gains(key, *args, **kw):
        jax.debug.callback(lambda k: outcomes.append(np.asarray(k)), key)
        return real(key, *args, **kw)

    monkeypatch.setattr(AL, "lookahead_gains", lookahead_gains)
    spy = sur._replace(init=init)
    key = jax.random.PRNGKey(5)
    for make in (AL.make_expected_gain_selector, AL.make_plugin_gain_selector):
        jax.block_until_ready(jax.jit(make(scm, spy, n_draws=1))(key, obs))
    assert len(inits) == 2 and all(np.array_equal(k, AL.refit_key(key)) for k in inits)
    assert len(outcomes) == 2 and all(np.array_equal(k, AL.lookahead_key(key)) for k in outcomes)
