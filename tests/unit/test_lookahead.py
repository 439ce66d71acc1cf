"""The bounded-cost lookahead above the exact posterior's size: shortlist, what-if posterior,
and the selectors that read them (policy lookahead input and plugin_active)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import active_learning as AL
from causal_grpo import posterior_mcmc as mc
from causal_grpo.features import Buffer
from causal_grpo.scm import SCM, sample_n
from causal_grpo.scm_families import FamilyConfig, GraphKind, medium, sample_family
from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate, set_scores


def _posterior(scm, cfg, n=40, capacity=60):
    """(surrogate, its state after n observational samples, the observation of them)."""
    d = scm.d
    sur = make_analytic_surrogate(cfg, d)
    x0 = sample_n(jax.random.PRNGKey(0), scm, n)
    buf = Buffer.empty(capacity, d)
    buf = Buffer(buf.values.at[:n].set(x0), buf.intervened, buf.valid.at[:n].set(True))
    # Under one jit: eager calls would compile every primitive of the MCMC separately.
    state = jax.jit(lambda: sur.update(sur.init(jax.random.PRNGKey(1), scm.var_mask),
                                       buf.values, buf.intervened, buf.valid))()
    return sur, state, AL.observe(scm, buf, jnp.asarray(0), sur.edge_probs(state))


def _plugin_inputs(obs):
    d = obs.var_mask.shape[-1]
    shapes = SCM(jnp.zeros((d, d)), jnp.zeros((d, d)), jnp.ones((d,)), obs.target, obs.var_mask,
                 obs.low, obs.high)
    return AL.plugin_simulator(obs.probs, obs.buffer, shapes), jnp.stack([obs.low, obs.high])


MCMC6 = AnalyticConfig(exact_max_d=0, candidates=5, max_indegree=2, mcmc_steps=60)


@pytest.mark.parametrize("cfg", [AnalyticConfig(), MCMC6], ids=["exact", "mcmc"])
def test_shortlist_covering_every_variable_is_the_full_lookahead(cfg):
    """With m >= d - 1 the shortlist holds every allowed variable, and the shortlisted gains
    are the full lookahead's; with the exact posterior lookahead_gains *is* the full one."""
    scm = medium().to_scm()
    sur, state, obs = _posterior(scm, cfg)
    (sim, shift, ref), grid = _plugin_inputs(obs)
    key = jax.random.PRNGKey(3)
    ok = np.asarray(AL.allowed_variables(obs))
    listed = np.asarray(AL.shortlist(obs, scm.d))
    assert set(listed[:ok.sum()].tolist()) == set(np.flatnonzero(ok).tolist())

    def cheap(st):
        return (sur, st) if sur.what_if is None else sur.what_if(st, obs.probs)

    # Jitted (eager, the vmapped posterior updates dispatch op by op, several times slower),
    # the what-if state made inside each program alike, so the three agree to float rounding:
    # two programs' float32 roundings move these gains (-0.06 to 1.8) by up to 7e-5 under
    # XLA:CPU's older emitters (the suite's), while any two of them are 9e-3 or more apart.
    gains = jax.jit(lambda st, c: AL.expected_gains(key, obs, *cheap(st), sim, shift, ref, 2,
                                                    grid, c))
    full = gains(state, None)
    short = gains(state, AL.shortlist(obs, scm.d))
    np.testing.assert_allclose(np.asarray(short)[ok], np.asarray(full)[ok], rtol=0, atol=2e-4)
    assert np.all(np.isneginf(np.asarray(short)[~ok]))
    bounded = jax.jit(lambda st: AL.lookahead_gains(key, obs, sur, st, sim, shift, ref, 2,
                                                    grid))(state)
    if sur.what_if is None:
        np.testing.assert_array_equal(np.asarray(bounded), np.asarray(full))
    else:   # d = 5 <= LOOKAHEAD_SHORTLIST: the bounded lookahead covers everything too
        np.testing.assert_allclose(np.asarray(bounded)[ok], np.asarray(full)[ok], rtol=1e-5,
                                   atol=1e-6)
        # A shorter shortlist leaves the others out; none (the oracle's) leaves nobody out.
        two, every = (np.asarray(jax.jit(lambda st, m=m: AL.lookahead_gains(
            key, obs, sur, st, sim, shift, ref, 2, grid, shortlist_size=m))(state))
            for m in (2, None))
        top2 = np.asarray(AL.shortlist(obs, 2))
        np.testing.assert_allclose(two[top2], np.asarray(full)[top2], rtol=0, atol=2e-4)
        assert np.isneginf(np.delete(two, top2, axis=0)).all()
        np.testing.assert_allclose(every[ok], np.asarray(full)[ok], rtol=0, atol=2e-4)


def test_shortlist_is_the_top_orientation_entropy_allowed_variables():
    """By hand: per pair, P(adjacent) times the binary entropy of the direction given it."""
    scm = medium().to_scm()
    _, _, obs = _posterior(scm, AnalyticConfig())
    probs = np.asarray(obs.probs, np.float64)
    score = np.zeros(scm.d)
    for i, j in itertools.permutations(range(scm.d), 2):
        adj = probs[i, j] + probs[j, i]
        if adj > 0:
            r = np.array([probs[i, j], probs[j, i]]) / adj
            r = r[r > 0]
            score[i] += adj * -(r * np.log(r)).sum()
    np.testing.assert_allclose(np.asarray(AL.orientation_entropy(obs)), score, atol=1e-4)
    score[int(scm.target)] = -np.inf
    want = np.argsort(-score, kind="stable")[:3]
    assert np.asarray(AL.shortlist(obs, 3)).tolist() == want.tolist()
    # Not the total edge entropy's ranking on this state (the test can tell the two apart).
    ent = np.asarray(AL.edge_entropy(obs)).copy()
    ent[int(scm.target)] = -np.inf
    assert np.argsort(-ent, kind="stable")[:3].tolist() != want.tolist()


def _brute_edges(scores, cand, order):
    """(d, d) P(c -> i | order) by enumerating every scored parent set inside U_i."""
    d, K = cand.shape
    sets = [s for size in range(3) for s in itertools.combinations(range(K), size)]
    pos = {v: p for p, v in enumerate(order)}
    out = np.zeros((d, d))
    for i in range(d):
        total, per = 0.0, np.zeros(d)
        for p, s in enumerate(sets):
            if np.isneginf(scores[i, p]) or any(
                    cand[i, b] >= d or pos[cand[i, b]] > pos[i] for b in s):
                continue
            w = np.exp(scores[i, p])
            total += w
            for b in s:
                per[cand[i, b]] += w
        out[:, i] = per / total
    return out


def test_what_if_update_is_importance_reweighting_of_the_order_sample():
    """After a row do(X_j): the rescored nodes are those with j among their candidates, their
    scores are the full scores of the new data, and the edge marginals are the orders'
    exact per-order marginals weighted by W_new(o) / W_then(o) (brute force over parent sets).
    An observational row rescoring nobody leaves the marginals where they were."""
    cfg = MCMC6
    scm = medium().to_scm()
    d = scm.d
    sur, state, obs = _posterior(scm, cfg, n=15)
    _, w = sur.what_if(state, obs.probs)
    cand = np.asarray(w.cand)
    j = 2
    do = np.arange(d) == j
    x = jnp.asarray(sample_n(jax.random.PRNGKey(9), scm, 1))
    x = x.at[0, j].set(2.0)
    new = mc.what_if_update(cfg, w, x, jnp.asarray(do)[None], jnp.ones((1,), bool))

    K = cand.shape[1]
    sets = [s for size in range(3) for s in itertools.combinations(range(K), size)]
    idx = np.full((d, len(sets), 2), d)
    for p, s in enumerate(sets):
        idx[:, p, :len(s)] = cand[:, list(s)]
    size = np.array([len(s) for s in sets])
    ok_sets = (idx < d).sum(-1) == size

    def scores(stats):
        sc = np.asarray(set_scores(stats, w.var_mask, jnp.asarray(idx), jnp.asarray(size),
                                   cfg.penalty, cfg.score))
        return np.where(ok_sets, sc, -np.inf)

    then, now = scores(w.stats), scores(new.stats)
    hit = (cand == j).any(1)
    mixed = np.where(hit[:, None], now, then)      # only nodes with candidate j rescored

    def log_weight(sc, order):
        e = _brute_edges(sc, cand, order)           # reuse the enumeration for alpha:
        pos = {v: p for p, v in enumerate(order)}
        tot = 0.0
        for i in range(d):
            ws = [sc[i, p] for p, s in enumerate(sets) if not np.isneginf(sc[i, p]) and all(
                cand[i, b] < d and pos[cand[i, b]] < pos[i] for b in s)]
            tot += np.logaddexp.reduce(ws)
        return tot, e

    orders = np.asarray(w.orders)
    lw, edges = zip(*(log_weight(mixed, o) for o in orders))
    lw0 = [log_weight(then, o)[0] for o in orders]
    r = np.exp(np.array(lw) - np.array(lw0) - np.max(np.array(lw) - np.array(lw0)))
    want = np.tensordot(r / r.sum(), np.array(edges), 1)
    np.testing.assert_allclose(np.asarray(new.edge_probs), want, atol=2e-4)
    before = np.mean([log_weight(then, o)[1] for o in orders], axis=0)
    np.testing.assert_allclose(np.asarray(w.edge_probs), before, atol=2e-4)

    obs_row = mc.what_if_update(cfg, w, x, jnp.zeros((1, d), bool), jnp.ones((1,), bool))
    np.testing.assert_allclose(np.asarray(obs_row.edge_probs), np.asarray(w.edge_probs),
                               atol=1e-6)


def test_what_if_orders_are_not_drawn_with_the_next_updates_chain_keys():
    """The what-if order sample scores the candidate interventions; the next update's chains
    must not repeat its proposals (correlating the chosen row with the posterior it updates):
    the next update's first chain keys, run from the what-if start, give another sample."""
    cfg = MCMC6
    scm = medium().to_scm()
    sur, state, obs = _posterior(scm, cfg, n=15)
    _, w = sur.what_if(state, obs.probs)
    sub = jax.random.split(state.key)[1]  # what update_state hands mcmc_posterior
    keys = jax.random.split(sub, state.orders.shape[0])
    start = jnp.broadcast_to(mc.order_of(obs.probs), state.orders.shape)
    run = jax.jit(jax.vmap(lambda k, o: mc._chain(k, o, w.alpha, w.cand, mc.WHAT_IF_STEPS)[2]))
    same_keys = np.asarray(run(keys, start))[:, mc.WHAT_IF_THIN - 1::mc.WHAT_IF_THIN]
    own = np.asarray(w.orders).reshape(same_keys.shape)
    assert same_keys.shape == own.shape and not np.array_equal(same_keys, own)


def test_large_d_selectors_have_fixed_shapes_under_vmap_and_pick_from_the_shortlist():
    """At d = 20 (order MCMC): the plug-in chooser and the policy's lookahead input run under
    jit(vmap) with the same values as one seed at a time; the plug-in's choice is on the
    shortlist, and every allowed variable off the shortlist has the lowest lookahead z-score."""
    from causal_grpo.policy import lookahead_features, refit_posterior
    d = 20
    src = FamilyConfig(kind=GraphKind.ER, d=d, expected_degree=(2.0, 3.0))
    cfg = AnalyticConfig(mcmc_steps=40)
    pairs = [_posterior(sample_family(jax.random.PRNGKey(s), src), cfg, n=30) for s in (0, 1)]
    obs = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[p[2] for p in pairs])
    sur = pairs[0][0]
    plug = AL.make_plugin_selector(sur, 1)

    def one(key, o):
        s, st = refit_posterior(key, o)
        return plug(key, o), lookahead_features(key, o, s, st, 1)

    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    acts, z = jax.jit(jax.vmap(one))(keys, obs)
    assert z.shape == (2, d, 2) and acts.variable.shape == (2,)
    for s in range(2):
        o = jax.tree_util.tree_map(lambda a: a[s], obs)
        a1, z1 = jax.jit(one)(keys[s], o)
        np.testing.assert_allclose(np.asarray(z[s]), np.asarray(z1), rtol=1e-4, atol=1e-4)
        assert int(a1.variable) == int(acts.variable[s])
        listed = np.asarray(AL.shortlist(o, AL.LOOKAHEAD_SHORTLIST))
        assert int(acts.variable[s]) in listed
        ok = np.asarray(AL.allowed_variables(o))
        off = ok.copy()
        off[listed] = False
        zs = np.asarray(z[s])
        assert off.sum() == ok.sum() - AL.LOOKAHEAD_SHORTLIST
        assert np.all(zs[off] == zs[ok].min()) and zs[listed].max() > zs[ok].min()
        assert np.all(zs[~ok] == 0)


def test_order_of_puts_likely_sources_first():
    """A chain 2 -> 0 -> 1 and an unrelated 3: expected in- minus out-degree is -1 for 2, 0 for
    0 and 3 (ties keep index order), +1 for 1."""
    p = np.zeros((4, 4), np.float32)
    p[2, 0] = p[0, 1] = 1.0
    assert np.asarray(mc.order_of(jnp.asarray(p))).tolist() == [2, 0, 3, 1]
