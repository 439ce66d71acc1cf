"""The Phase-2 episode: selectors, pairing of randomness, learning, and a plain-loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import active_learning as AL
from causal_grpo import metrics as M
from causal_grpo.features import Buffer
from causal_grpo.scm import propagate, sample_n, stack_scms
from causal_grpo.scm_families import FamilyConfig, GraphKind, easy, medium, sample_family
from causal_grpo.surrogate import SurrogateConfig, SurrogateKind, make_surrogate

CFG = AL.EpisodeConfig(n_observational=20, n_interventions=12)


_RUNNERS = {}


def run(method, scms, n_seeds, cfg=CFG):
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(3), s))(jnp.arange(n_seeds))
    d = scms.adj.shape[-1]
    if (cfg, d) not in _RUNNERS:
        _RUNNERS[cfg, d] = AL.make_batch_runner(cfg, d)
    return _RUNNERS[cfg, d](keys, scms, None, AL.method_id(method))


@pytest.fixture(scope="module")
def padded_family():
    cfg = FamilyConfig(kind=GraphKind.ER, d=6, d_pad=8)
    return jax.vmap(lambda k: sample_family(k, cfg))(jax.random.split(jax.random.PRNGKey(0), 6))


@pytest.fixture(scope="module")
def all_methods(padded_family):
    return {m: run(m, padded_family, 6) for m in AL.BUILTIN_METHODS}


def test_interventions_are_on_real_non_target_variables_inside_the_range(all_methods, padded_family):
    for m in (AL.Method.RANDOM, AL.Method.ROUND_ROBIN, AL.Method.UNCERTAINTY, AL.Method.ORACLE):
        rec = all_methods[m].record
        var = np.asarray(rec.variable)[:, 1:]
        val = np.asarray(rec.value)[:, 1:]
        tgt = np.asarray(padded_family.target)
        assert (var >= 0).all() and (var < 6).all(), m     # padding variables 6, 7 never chosen
        assert (var != tgt[:, None]).all(), m
        assert (val >= -2).all() and (val <= 2).all(), m
        buf = all_methods[m].buffer
        intervened = np.asarray(buf.intervened)
        assert intervened[:, :20].sum() == 0
        assert (intervened[:, 20:].sum(-1) == 1).all()
        rows = np.arange(intervened.shape[0])[:, None], np.arange(20, 32)[None, :]
        np.testing.assert_allclose(np.asarray(buf.values)[rows[0], rows[1], var], val, rtol=1e-6)


def test_round_robin_cycles_and_uncertainty_uses_extremes(all_methods, padded_family):
    var = np.asarray(all_methods[AL.Method.ROUND_ROBIN].record.variable)[:, 1:]
    for s, tgt in enumerate(np.asarray(padded_family.target)):
        order = [j for j in range(6) if j != tgt]
        assert var[s].tolist() == [order[t % 5] for t in range(12)]
    val = np.asarray(all_methods[AL.Method.UNCERTAINTY].record.value)[:, 1:]
    assert set(np.unique(np.abs(val))) == {2.0}


def test_oracle_picks_true_parents_and_observational_never_intervenes(all_methods, padded_family):
    var = np.asarray(all_methods[AL.Method.ORACLE].record.variable)[:, 1:]
    adj = np.asarray(padded_family.adj)
    for s, tgt in enumerate(np.asarray(padded_family.target)):
        assert all(adj[s, j, tgt] for j in var[s])
    obs = all_methods[AL.Method.OBSERVATIONAL]
    assert (np.asarray(obs.record.variable)[:, 1:] == -1).all()
    assert not np.asarray(obs.buffer.intervened).any()


def test_methods_share_observational_data_and_step_noise(all_methods):
    """Paired comparisons: same SCM draw, same observational data, same step-0 metrics."""
    ref = all_methods[AL.Method.RANDOM]
    for m, res in all_methods.items():
        np.testing.assert_array_equal(np.asarray(res.buffer.values)[:, :20],
                                      np.asarray(ref.buffer.values)[:, :20])
        np.testing.assert_array_equal(np.asarray(res.record.f1)[:, 0], np.asarray(ref.record.f1)[:, 0])


def test_scan_matches_a_plain_python_loop():
    """The jitted scan reproduces a step-by-step loop built from the same pieces."""
    scm = easy().to_scm()
    cfg = AL.EpisodeConfig(n_observational=10, n_interventions=5)
    key = jax.random.PRNGKey(7)
    sur = make_surrogate(cfg.surrogate, 5, 15)
    res = jax.jit(lambda k: AL.run_episode(k, scm, cfg, sur, AL.random_selector))(key)

    ks = AL.cell_keys(key)
    # The posterior's update and F1 as programs of their own (op by op: most of a minute).
    update = jax.jit(sur.update)
    f1 = jax.jit(lambda st: M.structure_metrics(scm.adj, M.posterior_graph(sur.edge_probs(st)))["f1"])
    x0 = sample_n(ks["obs"], scm, 10)
    state = update(sur.init(ks["surrogate"], scm.var_mask), x0, jnp.zeros_like(x0, bool),
                   jnp.ones(10, bool))
    eps = jax.random.normal(ks["noise"], (5, 5))
    buf = Buffer(jnp.zeros((15, 5)).at[:10].set(x0), jnp.zeros((15, 5), bool),
                 jnp.zeros(15, bool).at[:10].set(True))
    f1s = [float(f1(state))]
    for t in range(5):
        obs = AL.observe(scm, buf, jnp.asarray(t), sur.edge_probs(state))
        act = AL.random_selector(jax.random.fold_in(ks["select"], t), obs)
        mask = jnp.arange(5) == act.variable
        x = propagate(scm, eps[t], mask, jnp.where(mask, act.value, 0.0))
        buf = buf.write(10 + t, x, mask)
        state = update(state, x[None], mask[None], jnp.ones(1, bool))
        f1s.append(float(f1(state)))
        assert int(res.record.variable[t + 1]) == int(act.variable)
    np.testing.assert_allclose(np.asarray(res.record.f1), f1s, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.final_probs), np.asarray(sur.edge_probs(state)), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.record.chain_gap), np.zeros(6))   # exact DP


def test_chain_gap_per_step_is_the_mcmc_states_after_each_update():
    """The record carries the order-MCMC state's chain gap of every step: replaying the
    episode's buffer row by row into a fresh surrogate (same key) gives the same figures."""
    from causal_grpo.surrogate_bayes import AnalyticConfig

    scm = easy().to_scm()
    mcmc = AnalyticConfig(exact_max_d=3, candidates=3, chains=3, mcmc_steps=40)
    cfg = AL.EpisodeConfig(n_observational=10, n_interventions=6,
                           surrogate=SurrogateConfig(analytic=mcmc))
    sur = make_surrogate(cfg.surrogate, 5, 16)
    key = jax.random.PRNGKey(11)
    res = jax.jit(lambda k: AL.run_episode(k, scm, cfg, sur, AL.random_selector))(key)

    buf = res.buffer
    update = jax.jit(sur.update)      # one program per row count; op by op it took a minute
    state = update(sur.init(AL.cell_keys(key)["surrogate"], scm.var_mask), buf.values[:10],
                   buf.intervened[:10], jnp.ones(10, bool))
    gaps = [float(sur.chain_gap(state))]
    for n in range(10, 16):
        state = update(state, buf.values[n:n + 1], buf.intervened[n:n + 1], jnp.ones(1, bool))
        gaps.append(float(sur.chain_gap(state)))
    got = np.asarray(res.record.chain_gap)
    np.testing.assert_allclose(got, gaps, atol=1e-5)
    assert ((got >= 0) & (got <= 1)).all() and got.max() > 0   # 3 short chains disagree


def test_analytic_surrogate_learns_medium_from_interventions():
    scms = stack_scms([medium().to_scm()] * 8)
    cfg = AL.EpisodeConfig(n_observational=30, n_interventions=40)
    rec = run(AL.Method.RANDOM, scms, 8, cfg).record
    f1 = np.asarray(rec.f1)
    assert f1[:, -1].mean() > 0.9 > f1[:, 0].mean() + 0.2
    obs = run(AL.Method.OBSERVATIONAL, scms, 8, cfg).record
    assert f1[:, -1].mean() > np.asarray(obs.f1)[:, -1].mean() + 0.2


@pytest.mark.parametrize("spec, gain", [(easy, 0.5), (medium, 0.2)])
def test_neural_surrogate_f1_rises_with_data(spec, gain):
    """The learnable surrogate really learns (at the seed's default learning rate 1e-3)."""
    s = spec()
    scms = stack_scms([s.to_scm()] * 6)
    cfg = AL.EpisodeConfig(n_observational=30, n_interventions=50,
                           surrogate=SurrogateConfig(kind=SurrogateKind.NEURAL))
    f1 = np.asarray(run(AL.Method.RANDOM, scms, 6, cfg).record.f1)
    assert f1[:, -1].mean() > f1[:, 0].mean() + gain
    assert f1[:, -1].mean() > f1[:, 25].mean() - 0.05   # no collapse late in the episode


def _after_observational(scm, n=20, capacity=40):
    """The exact-posterior surrogate, a buffer of n observational samples, and the observation."""
    d = scm.d
    sur = make_surrogate(SurrogateConfig(), d, capacity)
    x0 = sample_n(jax.random.PRNGKey(0), scm, n)
    buf = Buffer.empty(capacity, d)
    buf = Buffer(buf.values.at[:n].set(x0), buf.intervened, buf.valid.at[:n].set(True))
    update = jax.jit(sur.update)      # op by op the exact posterior takes many seconds
    probs = sur.edge_probs(update(sur.init(jax.random.PRNGKey(0), scm.var_mask), x0,
                                  jnp.zeros_like(x0, bool), jnp.ones((n,), bool)))
    return sur, buf, AL.observe(scm, buf, jnp.asarray(0), probs)


def test_expected_gain_oracle_picks_the_best_candidate_of_a_plain_loop():
    scm = easy().to_scm()
    d = scm.d
    sur, buf, obs = _after_observational(scm)
    key = jax.random.PRNGKey(5)
    act = jax.jit(lambda k, o: AL.make_expected_gain_selector(scm, sur, n_draws=4)(k, o))(key, obs)

    state = jax.jit(sur.update)(sur.init(AL.refit_key(key), scm.var_mask), buf.values,
                                buf.intervened, buf.valid)
    before = float(M.expected_shd(scm.adj, sur.edge_probs(state), scm.var_mask))
    # One posterior update and its expected SHD, as one program (op by op: 32 slow updates).
    after = jax.jit(lambda x, do: M.expected_shd(
        scm.adj, sur.edge_probs(sur.update(state, x[None], do[None], jnp.ones((1,), bool))),
        scm.var_mask))
    eps = jax.random.normal(AL.lookahead_key(key), (4, d))   # keyed as the plug-in chooser
    gains = {}
    for j in range(d):
        if j == int(scm.target):
            continue
        for v in (float(scm.low), float(scm.high)):
            do = jnp.arange(d) == j
            g = []
            for e in eps:
                x = propagate(scm, e, do, jnp.where(do, v, 0.0))
                g.append(before - float(after(x, do)))
            gains[j, v] = np.mean(g)
    best = max(gains.values())
    assert int(act.variable) != int(scm.target)
    assert gains[int(act.variable), float(act.value)] == pytest.approx(best, abs=1e-4)
    assert best > min(gains.values()) + 1e-3          # the choice is not a tie


def test_fit_linear_scm_recovers_weights_intercepts_and_noise():
    """Data from a known SCM, shifted by known intercepts; rows where a variable was intervened
    on are left out of its own regression (their values there are not its mechanism)."""
    scm = easy().to_scm()
    d, n = scm.d, 4000
    x = np.asarray(sample_n(jax.random.PRNGKey(1), scm, n))
    shift = np.array([1.0, -2.0, 0.5, 3.0, 0.0], np.float32)
    x = x + shift @ np.linalg.inv(np.eye(d) - np.asarray(scm.weights))
    intervened = np.zeros((n, d), bool)
    intervened[:200, 3] = True
    x[:200, 3] = 100.0                                   # garbage only under do(D)
    buf = Buffer(jnp.asarray(x, jnp.float32), jnp.asarray(intervened), jnp.ones((n,), bool))
    fitted, intercept = AL.fit_linear_scm(scm.adj, buf, scm)
    np.testing.assert_allclose(fitted.weights, scm.weights, rtol=0.03, atol=0.02)
    np.testing.assert_allclose(intercept, shift, atol=0.02)
    np.testing.assert_allclose(fitted.noise_std, scm.noise_std, rtol=0.05)
    assert int(fitted.target) == int(scm.target)


def test_plugin_gain_selector_reads_no_truth():
    """The data-only chooser: the same choice whatever SCM lends it shapes; a real candidate."""
    scm = medium().to_scm()
    sur, _, obs = _after_observational(scm)
    wrong = scm._replace(adj=scm.adj.T, weights=-3.0 * scm.weights.T, noise_std=scm.noise_std * 7)
    choose = jax.jit(lambda s, k: AL.make_plugin_gain_selector(s, sur, n_draws=4)(k, obs))
    for k in range(3):
        key = jax.random.PRNGKey(k)
        a, b = choose(scm, key), choose(wrong, key)
        assert (int(a.variable), float(a.value)) == (int(b.variable), float(b.value))
        assert int(a.variable) != int(scm.target) and float(a.value) in (float(scm.low), float(scm.high))


@pytest.mark.parametrize("draws", [1, 4])
def test_lookahead_features_are_the_plugin_choosers_gains_z_scored(draws):
    """The policy's lookahead input (drawn from the acting key's ``lookahead_key``) ranks
    candidates as the data-only plug-in chooser (as many draws, both ends, same acting key)
    does, is zero on the target and padding, and is z-scored."""
    from causal_grpo.policy import lookahead_features
    scm = medium().to_scm()
    sur, buf, obs = _after_observational(scm)
    state = jax.jit(sur.update)(sur.init(jax.random.PRNGKey(0), scm.var_mask), buf.values,
                                buf.intervened, buf.valid)
    look = jax.jit(lambda kk: lookahead_features(kk, obs, sur, state, draws))
    plug = jax.jit(lambda kk: AL.make_plugin_gain_selector(scm, sur, n_draws=draws)(kk, obs))
    ok = np.asarray(AL.allowed_variables(obs))
    for k in range(3):
        key = jax.random.PRNGKey(k)
        z = np.asarray(look(AL.lookahead_key(key)))
        assert z.shape == (scm.d, 2)
        assert np.all(z[~ok] == 0)
        assert abs(z[ok].mean()) < 1e-4 and z[ok].std() == pytest.approx(1.0, abs=1e-3)
        act = plug(key)
        j, end = np.unravel_index(np.argmax(np.where(ok[:, None], z, -np.inf)), z.shape)
        assert (j, [float(scm.low), float(scm.high)][end]) == (int(act.variable), float(act.value))


def test_auto_lookahead_draws_is_a_fixed_work_budget():
    """"auto": 8 draws while 2d updates of the exact posterior are cheap, fewer as its
    d 2^d work grows, never below one; anything but a positive int or "auto" is refused."""
    from causal_grpo.policy import auto_lookahead_draws, resolve_lookahead_draws
    assert [auto_lookahead_draws(d) for d in (2, 5, 8, 10, 11, 12, 15, 30)] == [8, 8, 8, 8, 3, 1, 1, 1]
    for d in range(2, 17):
        k = auto_lookahead_draws(d)
        # The rule's budget: k draws at d cost no more than 8 draws at d = 10 (unless k = 1).
        assert k == 1 or k * 2 * d * d * 2 ** d <= 8 * 2 * 10 * 10 * 2 ** 10
    assert resolve_lookahead_draws("auto", 12) == 1 and resolve_lookahead_draws(3, 12) == 3
    for bad in (0, -2, 1.5, "4", True, None):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            resolve_lookahead_draws(bad, 5)


def test_auto_draws_selector_acts_as_the_explicit_number():
    """The "auto" selector resolves its draws from the (static) size it is traced at: on a
    5-variable SCM it is the very program of the 8-draw selector, not that of the 1-draw one
    (compared as traced programs, which is cheaper than compiling three)."""
    from causal_grpo.networks import PolicyConfig
    from causal_grpo.phase1 import Phase1Config, init_params
    from causal_grpo.policy import make_policy_selector
    cfg = PolicyConfig(hidden=16, layers=1, heads=2)
    params = init_params(Phase1Config(policy=cfg, seed=0))
    scm = easy().to_scm()
    _, _, obs = _after_observational(scm)
    key = jax.random.PRNGKey(0)
    auto, eight, one = (str(jax.make_jaxpr(make_policy_selector(cfg, lookahead_draws=k))(
        key, obs, params)) for k in ("auto", 8, 1))
    assert auto == eight and auto != one
    with pytest.raises(ValueError, match="'auto'"):
        make_policy_selector(cfg, lookahead_draws="many")


def test_a_neural_refit_from_a_padded_buffer_trains_as_on_its_rows():
    """The choosers refit the surrogate from the episode's whole (padded) buffer: it took
    steps_per_sample Adam steps per buffer row, valid or not (1,600 for 30 samples in 80
    rows), so their posterior was not the episode's and depended on the buffer's size."""
    from causal_grpo.surrogate_neural import NeuralConfig
    d, n, capacity = 4, 30, 80
    cfg = SurrogateConfig(kind=SurrogateKind.NEURAL, neural=NeuralConfig(steps_per_sample=5))
    sur = make_surrogate(cfg, d, capacity)
    key, mask = jax.random.PRNGKey(1), jnp.ones(d, bool)
    rows = sample_n(jax.random.PRNGKey(2), easy().to_scm(), n)[:, :d]
    pad = jnp.zeros((capacity - n, d))
    # The first of split(k, 400) are split(k, 150) under partitionable threefry (JAX's default).
    with jax.threefry_partitionable(True):
        on_rows = jax.jit(sur.update)(sur.init(key, mask), rows, jnp.zeros((n, d), bool),
                                      jnp.ones(n, bool))
        padded = jax.jit(sur.update)(sur.init(key, mask), jnp.concatenate([rows, pad]),
                                     jnp.zeros((capacity, d), bool), jnp.arange(capacity) < n)
    np.testing.assert_allclose(sur.edge_probs(padded), sur.edge_probs(on_rows), atol=1e-6)
    moved = sur.edge_probs(on_rows) - sur.edge_probs(sur.init(key, mask))
    assert float(jnp.abs(moved).max()) > 0.01
