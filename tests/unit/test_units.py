"""A variable's unit changes nothing that is learnt or chosen.

The same data in other units (each variable times its own power of two, so that the rescaled
numbers are exact) must give the same posterior, the same plug-in SCM up to those units, the
same policy input and the same episode. Absolute floors in the regressions (a ridge of 1e-9, a
residual floor of 1e-12, a variance floor of 1e-6 in the policy's standardisation) used to
swamp variables on small scales: ``medium`` with every noise std times 2^-14 gave random
interventions an F1-AUC of 0.34 instead of 0.85.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import active_learning as AL
from causal_grpo.features import Buffer
from causal_grpo.scm import SCMSpec, sample_n
from causal_grpo.scm_families import FamilyConfig, GraphKind, medium, sample_family
from causal_grpo.surrogate import SurrogateConfig, SurrogateKind, make_surrogate
from causal_grpo.surrogate_bayes import AnalyticConfig, Score
from causal_grpo.sweep import cell_batch

D = 5
# Per-variable units; 2^-45 puts a variance near 1e-27 (std 3e-14: products of two such
# variances underflow float32), 2^6 checks large ones too.
UNITS = 2.0 ** np.array([-14.0, 0.0, -45.0, 6.0, -9.0], np.float32)


def _data(n: int = 40, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n rows of an ER SCM on D variables with a third of the rows intervening on one variable;
    returns (values, intervened, true adjacency)."""
    scm = sample_family(jax.random.PRNGKey(seed), FamilyConfig(kind=GraphKind.ER, d=D))
    x = np.array(sample_n(jax.random.PRNGKey(seed + 1), scm, n), np.float32)
    rng = np.random.default_rng(seed)
    iv = np.zeros((n, D), bool)
    for r in np.flatnonzero(rng.random(n) < 1 / 3):
        iv[r, rng.integers(D)] = True
    x[iv] = rng.uniform(-2, 2, iv.sum())
    # Each column in the power of two that puts its variance nearest one, which is where
    # unit_scale brings a variable in small units: so the small-unit numbers must be these.
    x = (x / 2.0 ** np.round(0.5 * np.log2(x.var(0)))).astype(np.float32)
    assert np.all((x.var(0) > 0.6) & (x.var(0) < 1.7))
    return x, iv, np.asarray(scm.adj)


@functools.lru_cache(maxsize=None)
def _posterior(cfg: SurrogateConfig, n: int):
    """Jitted (values, intervened) -> edge probabilities after one update (compiled once)."""
    sur = make_surrogate(cfg, D, n)

    def probs(x, iv):
        state = sur.update(sur.init(jax.random.PRNGKey(0), jnp.ones(D, bool)), x, iv,
                           jnp.ones(n, bool))
        return sur.edge_probs(state)

    return jax.jit(probs)


def _edge_probs(cfg: SurrogateConfig, x: np.ndarray, iv: np.ndarray) -> np.ndarray:
    return np.asarray(_posterior(cfg, len(x))(jnp.asarray(x), jnp.asarray(iv)))


@pytest.mark.parametrize("cfg", [
    SurrogateConfig(),
    SurrogateConfig(analytic=AnalyticConfig(score=Score.BGE)),
    SurrogateConfig(analytic=AnalyticConfig(exact_max_d=0, mcmc_steps=300, burn_in=300)),
    SurrogateConfig(kind=SurrogateKind.NEURAL)], ids=["bic", "bge", "mcmc", "neural"])
def test_the_posterior_does_not_depend_on_units(cfg):
    # The neural surrogate's settings are sized for data of order one or more: only small
    # units are brought to it (large ones change its fit, as they change any network's).
    units = np.minimum(UNITS, 1.0) if cfg.kind is SurrogateKind.NEURAL else UNITS
    x, iv, _ = _data()
    unit = _edge_probs(cfg, x, iv)
    off = unit[~np.eye(D, dtype=bool)]
    assert np.ptp(off) > 0.2                             # edge probabilities the data moved
    np.testing.assert_allclose(_edge_probs(cfg, x * units, iv), unit, atol=2e-3)


def test_order_mcmcs_candidate_parents_do_not_depend_on_units():
    """Forward selection by partial correlation (K = 2 of 4 possible parents, so it chooses)."""
    from causal_grpo.posterior_mcmc import select_candidates
    from causal_grpo.surrogate_bayes import add_rows, empty_stats
    x, iv, _ = _data()

    def cand(values):
        st = add_rows(empty_stats(D), jnp.asarray(values), jnp.asarray(iv), jnp.ones(len(x), bool))
        return np.asarray(jax.jit(select_candidates, static_argnums=2)(st, jnp.ones(D, bool), 2))

    unit = cand(x)
    assert np.all(unit < D)
    np.testing.assert_array_equal(cand(x * UNITS), unit)


def test_the_plugin_scm_fit_changes_only_by_the_units():
    """Weight of i -> j in units c: w c_j / c_i; noise std and intercept of j: times c_j.
    Small units only: the fit's ridge (1e-3), sized for units of order one, fades in large
    ones as a ridge does (3% on nearly collinear parents here)."""
    units = np.minimum(UNITS, 1.0)
    x, iv, adj = _data()
    n = len(x)
    template = sample_family(jax.random.PRNGKey(0), FamilyConfig(kind=GraphKind.ER, d=D))

    def fit(values):
        buf = Buffer(jnp.asarray(values), jnp.asarray(iv), jnp.ones(n, bool))
        sim, intercept = jax.jit(AL.fit_linear_scm)(jnp.asarray(adj), buf, template)
        return np.asarray(sim.weights), np.asarray(sim.noise_std), np.asarray(intercept)

    w, s, b = fit(x)
    wc, sc, bc = fit(x * units)
    # Compared in the unit data's units, so that a column at 2^-45 counts as much as any.
    np.testing.assert_allclose(wc * units[:, None] / units[None, :], w, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(sc / units, s, rtol=1e-3)
    np.testing.assert_allclose(bc / units, b, rtol=1e-3, atol=1e-6)


def test_the_plugin_fit_resolves_noise_far_below_the_intervention_range():
    """``medium`` with noise std 0.1 * 2^-7 and interventions at +-1: intervened columns and
    their descendants spread over the range, so they are not rescaled, and a noise floor of
    1e-3 in the data's units made their fitted noise up to 30% too large. The same SCM times
    2^7 is the reference. (Far smaller ratios of noise to spread, 1e-5, are beyond float32's
    normal equations here, as for BIC: README.)"""
    c = 2.0 ** -7
    spec = medium()
    scm = SCMSpec("m", spec.variables, spec.target, spec.weights, spec.noise_std * c,
                  (-1.0, 1.0)).to_scm()
    d, n_obs = scm.d, 20
    rows = [np.asarray(sample_n(jax.random.PRNGKey(0), scm, n_obs))]
    iv = np.zeros((n_obs + 2 * d, d), bool)
    for r in range(2 * d):
        j, v = r % d, 1.0 if r < d else -1.0
        mask, vals = np.arange(d) == j, np.where(np.arange(d) == j, v, 0.0)
        rows.append(np.asarray(sample_n(jax.random.PRNGKey(r + 1), scm, 1, jnp.asarray(mask),
                                        jnp.asarray(vals, jnp.float32))))
        iv[n_obs + r, j] = True
    x = np.concatenate(rows).astype(np.float32)

    def noise(values):
        buf = Buffer(jnp.asarray(values), jnp.asarray(iv), jnp.ones(len(x), bool))
        sim, _ = jax.jit(AL.fit_linear_scm)(scm.adj, buf, scm)
        return np.asarray(sim.noise_std)

    # Within 5% (float32's normal equations and the ridge at this ratio: up to 4.3% here); the
    # fixed floor was 25-33% off on every variable.
    np.testing.assert_allclose(noise(x) / c, noise(x / c), rtol=5e-2)


def test_unit_scale_is_one_at_and_above_the_bound_and_an_exact_power_of_two_below():
    """What keeps every number of data in units of order one bit for bit as it was."""
    from causal_grpo.scm import SMALL_VARIANCE, unit_scale
    var = jnp.asarray([SMALL_VARIANCE, 2 * SMALL_VARIANCE, 1.0, 1e30, 0.0, -1.0, jnp.nan,
                       jnp.inf, 0.999 * SMALL_VARIANCE, 1e-12, 3e-30], jnp.float32)
    sc = np.asarray(jax.jit(unit_scale)(var))
    np.testing.assert_array_equal(sc[:8], 1.0)
    small = sc[8:]
    np.testing.assert_array_equal(small, 2.0 ** np.round(np.log2(small)))   # powers of two
    rescaled = np.asarray(var[8:]) / small ** 2
    assert np.all((rescaled >= 0.5) & (rescaled <= 2.0)), rescaled


def test_the_policys_input_does_not_depend_on_units():
    """The network's output (a perturbed initialisation, so its learned part reads the data)
    is the same for the buffer in other units."""
    from causal_grpo.networks import PolicyConfig, PolicyInput, dummy_input, make_policy
    cfg = PolicyConfig()
    x, iv, _ = _data()
    n = len(x)
    net = make_policy(cfg)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), dummy_input(cfg, D, n))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                       for p, k in zip(leaves, keys)])
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(D, cfg.input_features)), jnp.float32)
    probs = jnp.asarray(rng.uniform(size=(D, D)) * (1 - np.eye(D)), jnp.float32)

    apply = jax.jit(net.apply)

    def out(values):
        inp = PolicyInput(jnp.asarray(values), jnp.asarray(iv), jnp.ones(n, bool), features,
                          jnp.asarray(0), jnp.ones(D, bool), probs)
        o = apply(params, None, inp)
        return np.asarray(o.var_logits), np.asarray(o.value_logits)

    (v, b), (vc, bc) = out(x), out(x * UNITS)
    assert np.ptp(v) > 0.1                               # the learned part is not flat
    np.testing.assert_allclose(vc, v, atol=1e-3)
    np.testing.assert_allclose(bc, b, atol=1e-3)


def test_an_episode_in_small_units_is_the_same_episode():
    """``plugin_active`` (posterior, plug-in fit, simulated outcomes) on ``medium`` and on
    ``medium`` with every noise std and the intervention range times 2^-14: the same choices
    and the same F1/SHD at every step, on the same cells."""
    spec = medium()
    c = 2.0 ** -14
    small = SCMSpec("medium_small", spec.variables, spec.target, spec.weights,
                    spec.noise_std * c, tuple(v * c for v in spec.intervention_range))
    episode = AL.EpisodeConfig(n_observational=20, n_interventions=4, lookahead_draws=2)
    run = AL.make_reference_runner(episode, spec.d,
                                   lambda scm, sur: AL.make_plugin_gain_selector(scm, sur, 2))
    records = []
    for s in (spec, small):
        scms, keys = cell_batch(s, 7000, (0, 1, 2))
        records.append(run(keys, scms).record)
    unit, tiny = records
    np.testing.assert_array_equal(np.asarray(tiny.variable), np.asarray(unit.variable))
    np.testing.assert_allclose(np.asarray(tiny.value), np.asarray(unit.value) * c, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(tiny.f1), np.asarray(unit.f1))
    np.testing.assert_array_equal(np.asarray(tiny.shd), np.asarray(unit.shd))
    assert np.asarray(unit.f1)[:, -1].mean() > 0.5
