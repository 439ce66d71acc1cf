"""Phase 2: one active-learning episode as a ``lax.scan``, and the non-learned selectors.

An episode: draw ``n_observational`` samples, then for ``n_interventions`` steps a selector
picks ``do(X_j = v)`` (j a real, non-target variable, v in the SCM's intervention range), one
sample is drawn, the surrogate updates, and the step's metrics are recorded. Step 0 is the
state after the observational data.

Randomness is split so that comparisons are *paired*: the SCM draw, the observational data
and the exogenous noise of every step depend only on the cell key (scm, seed), never on the
method; each method then sees the same world and differs only in what it chooses.

A selector is a pure function ``(key, Observation, params) -> Action``; learned policies plug in
through ``params`` (see ``causal_grpo.policy.make_policy_selector``).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from causal_grpo import metrics as M
from causal_grpo.features import (BootstrapConfig, Buffer, bootstrap_noise, bootstrap_probs,
                                  features_from_probs)
from causal_grpo.scm import EXACT, SCM, column_moments, propagate, sample_n, unit_scale
from causal_grpo.surrogate import Surrogate, SurrogateConfig, make_surrogate

Array = jax.Array


class Method(enum.Enum):
    RANDOM = "random_active"
    ROUND_ROBIN = "round_robin_active"
    UNCERTAINTY = "uncertainty_active"
    ORACLE = "oracle_active"
    OBSERVATIONAL = "observational"
    PLUGIN = "plugin_active"
    GRPO_ACTIVE = "grpo_active"
    GRPO_BOOTSTRAP = "grpo_bootstrap"

    @property
    def needs_policy(self) -> bool:
        return self in (Method.GRPO_ACTIVE, Method.GRPO_BOOTSTRAP)

    @property
    def uses_bootstrap(self) -> bool:
        return self is Method.GRPO_BOOTSTRAP


class Observation(NamedTuple):
    """What a selector sees before choosing intervention number ``step + 1``.

    buffer: data so far; probs: (d, d) edge probabilities the features were built from;
    features: (d, F); target: () int; var_mask: (d,) bool; low/high: intervention range;
    step: () int32 interventions made so far.
    """

    buffer: Buffer
    probs: Array
    features: Array
    target: Array
    var_mask: Array
    low: Array
    high: Array
    step: Array


class Action(NamedTuple):
    """``do(X_variable = value)``; ``intervene = False`` means draw an observational sample."""

    variable: Array
    value: Array
    log_prob: Array
    intervene: Array


Selector = Callable[[Array, Observation, Any], Action]


def allowed_variables(obs: Observation) -> Array:
    """(d,) bool: real variables other than the target."""
    d = obs.var_mask.shape[-1]
    return obs.var_mask & (jnp.arange(d) != obs.target)


def _uniform_choice(key: Array, allowed: Array) -> tuple[Array, Array]:
    logits = jnp.where(allowed, 0.0, -jnp.inf)
    j = jax.random.categorical(key, logits)
    return j, -jnp.log(jnp.maximum(allowed.sum(), 1).astype(jnp.float32))


def random_selector(key: Array, obs: Observation, params: Any = None) -> Action:
    """Uniform non-target variable, value uniform in [low, high]."""
    k1, k2 = jax.random.split(key)
    j, lp = _uniform_choice(k1, allowed_variables(obs))
    v = jax.random.uniform(k2, (), minval=obs.low, maxval=obs.high)
    return Action(j, v, lp - jnp.log(obs.high - obs.low), jnp.asarray(True))


def round_robin_selector(key: Array, obs: Observation, params: Any = None) -> Action:
    """Non-target variables in index order, cycling; value uniform in [low, high]."""
    allowed = allowed_variables(obs)
    n = jnp.maximum(allowed.sum(), 1)
    rank = jnp.cumsum(allowed) - 1                      # rank among allowed variables
    j = jnp.argmax(allowed & (rank == obs.step % n))
    v = jax.random.uniform(key, (), minval=obs.low, maxval=obs.high)
    return Action(j, v, jnp.asarray(0.0), jnp.asarray(True))


def edge_entropy(obs: Observation) -> Array:
    """(d,) total pair entropy of the edges touching each variable (padding pairs left out)."""
    pair = obs.var_mask[:, None] & obs.var_mask[None, :]
    return jnp.sum(jnp.where(pair, M.pair_entropy(obs.probs), 0.0), axis=1)


def uncertainty_selector(key: Array, obs: Observation, params: Any = None) -> Action:
    """The variable touching the most edge entropy (ties at random), value at low or high."""
    k1, k2 = jax.random.split(key)
    allowed = allowed_variables(obs)
    score = edge_entropy(obs) + 1e-6 * jax.random.uniform(k1, obs.var_mask.shape)
    j = jnp.argmax(jnp.where(allowed, score, -jnp.inf))
    v = jnp.where(jax.random.bernoulli(k2, 0.5), obs.high, obs.low)
    return Action(j, v, jnp.asarray(0.0), jnp.asarray(True))


def make_oracle_selector(true_adj: Array) -> Selector:
    """Reference: a uniformly chosen *true* parent of the target, value uniform in range."""

    def select(key: Array, obs: Observation, params: Any = None) -> Action:
        k1, k2 = jax.random.split(key)
        allowed = allowed_variables(obs)
        parents = allowed & (true_adj[:, obs.target] != 0)
        j, lp = _uniform_choice(k1, jnp.where(parents.any(), parents, allowed))
        v = jax.random.uniform(k2, (), minval=obs.low, maxval=obs.high)
        return Action(j, v, lp, jnp.asarray(True))

    return select


def expected_gains(key: Array, obs: Observation, surrogate: Surrogate, state: Any, sim: SCM,
                   eps_shift: Array, ref_adj: Array, n_draws: int, grid: Array,
                   candidates: Array | None = None) -> Array:
    """(d, V) mean drop in expected SHD against ``ref_adj`` of ``do(X_j = grid[v])``.

    Outcomes come from ``sim`` with exogenous noise ``eps + eps_shift`` (a shift of eps is an
    intercept: ``sim.noise_std * eps_shift``); the ``n_draws`` noise draws are shared by all
    candidates, so the gains are paired. ``candidates`` (m,) restricts the work to those
    variables (default: all d). Entries of variables that may not be chosen (the target,
    padding) or are not candidates are ``-inf``. Cost: (d or m) * V * n_draws surrogate updates.
    """
    d = sim.d
    before = M.expected_shd(ref_adj, surrogate.edge_probs(state), obs.var_mask)
    eps = jax.random.normal(key, (n_draws, d))

    def gain(j, v):
        do = jnp.arange(d) == j

        def one(e):
            x = propagate(sim, e + eps_shift, do, jnp.where(do, v, 0.0))
            s = surrogate.update(state, x[None], do[None], jnp.ones((1,), bool))
            return before - M.expected_shd(ref_adj, surrogate.edge_probs(s), obs.var_mask)

        return jax.vmap(one)(eps).mean()

    js = jnp.arange(d) if candidates is None else candidates
    g = jax.vmap(lambda j: jax.vmap(lambda v: gain(j, v))(grid))(js)
    if candidates is not None:
        g = jnp.full((d, grid.shape[0]), -jnp.inf, g.dtype).at[candidates].set(g)
    return jnp.where(allowed_variables(obs)[:, None], g, -jnp.inf)


# Variables whose lookahead is computed when the surrogate's own updates are too dear for 2d
# of them per decision (``Surrogate.what_if``: the order-MCMC posterior above exact_max_d).
LOOKAHEAD_SHORTLIST = 8


def orientation_entropy(obs: Observation) -> Array:
    """(d,) sum over the other variables k of P(j - k adjacent) times the entropy (nats) of the
    direction given adjacency: the undecided orientations an intervention on j can settle."""
    p, q, _ = M.pair_probs(obs.probs)
    adj = p + q
    r = jnp.clip(p / jnp.maximum(adj, 1e-12), 1e-6, 1.0 - 1e-6)
    h = -(r * jnp.log(r) + (1.0 - r) * jnp.log1p(-r))
    pair = obs.var_mask[:, None] & obs.var_mask[None, :] & ~jnp.eye(p.shape[0], dtype=bool)
    return jnp.sum(jnp.where(pair, adj * h, 0.0), axis=1)


def shortlist(obs: Observation, m: int) -> Array:
    """(min(m, d),) the allowed variables with the most :func:`orientation_entropy`, most first;
    with fewer than m allowed, disallowed ones fill the end. (Over :func:`edge_entropy`, which
    also counts whether an edge exists at all, it raised grpo_active's F1-AUC 1-10 by +0.016
    on er50 and +0.004 on sf100, validation seeds; docs/BENCHMARKS.md.)"""
    score = jnp.where(allowed_variables(obs), orientation_entropy(obs), -jnp.inf)
    return jax.lax.top_k(score, min(m, score.shape[0]))[1]


def lookahead_gains(key: Array, obs: Observation, surrogate: Surrogate, state: Any, sim: SCM,
                    eps_shift: Array, ref_adj: Array, n_draws: int, grid: Array,
                    shortlist_size: int | None = LOOKAHEAD_SHORTLIST) -> Array:
    """:func:`expected_gains` at bounded cost: of all variables with the surrogate itself, or,
    when it has a cheaper what-if stand-in (``Surrogate.what_if``), with that stand-in, started
    from ``obs.probs``, of the ``shortlist_size`` variables of :func:`shortlist` (others
    ``-inf``; ``None``: of every variable, d / shortlist_size times the cost)."""
    if surrogate.what_if is None:
        return expected_gains(key, obs, surrogate, state, sim, eps_shift, ref_adj, n_draws, grid)
    cheap, cheap_state = surrogate.what_if(state, obs.probs)
    return expected_gains(key, obs, cheap, cheap_state, sim, eps_shift, ref_adj, n_draws, grid,
                          None if shortlist_size is None else shortlist(obs, shortlist_size))


def _best_expected_gain(key: Array, obs: Observation, surrogate: Surrogate, state: Any,
                        sim: SCM, eps_shift: Array, ref_adj: Array, n_draws: int,
                        n_values: int, shortlist_size: int | None = LOOKAHEAD_SHORTLIST) -> Action:
    """The candidate of :func:`lookahead_gains` (values spread evenly over the range) with the
    largest mean gain."""
    grid = jnp.linspace(obs.low, obs.high, n_values)
    g = lookahead_gains(key, obs, surrogate, state, sim, eps_shift, ref_adj, n_draws, grid,
                        shortlist_size)
    i = jnp.argmax(g.reshape(-1))
    return Action((i // n_values).astype(jnp.int32), grid[i % n_values].astype(jnp.float32),
                  jnp.asarray(0.0, jnp.float32), jnp.asarray(True))


def make_expected_gain_selector(scm: SCM, surrogate: Surrogate, n_draws: int = 16,
                                n_values: int = 2) -> Selector:
    """Reference (cheats twice): the best *one-step* chooser for the Phase-1 structure reward.

    For every allowed variable and each of ``n_values`` values spread over the intervention
    range (2: its two ends), it simulates ``n_draws`` outcomes from the *true* SCM, updates the
    surrogate with each, and picks the candidate with the largest mean drop in expected SHD
    against the *true* graph. No policy trained on that one-step reward can beat it in
    expectation, so it bounds what Phase 1 can learn (``python -m jobs.benchmark ceiling``).
    The surrogate is refitted from the buffer each step; cost: d * n_values * n_draws updates,
    of the what-if posterior above the exact posterior's size (:func:`lookahead_gains`). Every
    variable is a candidate there too, not only the choosers' shortlist, so that the bound
    also covers what the shortlist leaves out. Keyed as :func:`make_plugin_gain_selector`, so
    on the same cell the two simulate outcomes from the same noise.
    """

    def select(key: Array, obs: Observation, params: Any = None) -> Action:
        buf = obs.buffer
        state = surrogate.update(surrogate.init(refit_key(key), obs.var_mask), buf.values,
                                 buf.intervened, buf.valid)
        return _best_expected_gain(lookahead_key(key), obs, surrogate, state, scm,
                                   jnp.zeros((scm.d,)), scm.adj, n_draws, n_values,
                                   shortlist_size=None)

    return select


def fit_linear_scm(graph: Array, buffer: Buffer, template: SCM,
                   ridge: float = 1e-3) -> tuple[SCM, Array]:
    """Least-squares linear-Gaussian SCM on a given graph from the buffer.

    Each variable is regressed (with intercept, small ``ridge``) on its parents in ``graph``
    over the valid rows where it was not intervened on. Returns the SCM (``template``'s target,
    mask and range; weights, residual noise std) and the intercepts (d,).
    """
    d = graph.shape[-1]
    # Fitted in units of order one (the ridge is sized for them), then returned in the data's.
    sc = unit_scale(column_moments(buffer.values, buffer.valid)[1])
    X = buffer.values / sc
    usable = buffer.valid[:, None] & ~buffer.intervened

    def node(j):
        w = usable[:, j].astype(jnp.float32)
        pa = graph[:, j]
        Xa = jnp.concatenate([X * pa[None], jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
        Xw = (Xa * w[:, None]).T
        gram = jnp.matmul(Xw, Xa, precision=EXACT) + ridge * jnp.eye(d + 1)
        beta = jnp.linalg.solve(gram, jnp.matmul(Xw, X[:, j], precision=EXACT))
        resid = (X[:, j] - jnp.matmul(Xa, beta, precision=EXACT)) * w
        dof = jnp.maximum(w.sum() - pa.sum() - 1.0, 1.0)
        # The noise floor (an exact fit would simulate no noise) is relative to the column's
        # spread: interventions spread a column far beyond its noise (+-2 on a noise std of
        # 1e-5), so no fixed floor suits every column. A constant column keeps 1e-3.
        spread = jnp.sqrt(column_moments(X[:, j, None], usable[:, j])[1][0])
        floor = jnp.where(spread > 0, 1e-6 * spread, 1e-3)
        return beta[:d] * pa, beta[d], jnp.maximum(jnp.sqrt((resid ** 2).sum() / dof), floor)

    w_in, intercept, std = jax.vmap(node)(jnp.arange(d))       # w_in[j, i]: weight of i -> j
    w_in = w_in * sc[:, None] / sc[None, :]
    fitted = template._replace(adj=graph.astype(jnp.float32), weights=w_in.T,
                               noise_std=std * sc)
    return fitted, intercept * sc


def plugin_simulator(probs: Array, buffer: Buffer, template: SCM) -> tuple[SCM, Array, Array]:
    """The data-only stand-in for the truth: ``(sim, eps_shift, ref_adj)`` for
    :func:`expected_gains`, from the posterior's point-estimate graph and a linear SCM fitted
    to the buffer on it (intercepts become a shift of the exogenous noise)."""
    graph = M.posterior_graph(probs, template.var_mask)
    sim, intercept = fit_linear_scm(graph, buffer, template)
    return sim, intercept / sim.noise_std, graph


def lookahead_key(select_key: Array) -> Array:
    """The lookahead's key, derived from the key a selector acts with: the policy's lookahead
    input (both phases) and ``plugin_active`` draw the same outcomes from it."""
    return jax.random.fold_in(select_key, 1)


# Under partitionable threefry split(key)[1] is fold_in(key, 1), the lookahead's key: a refit
# initialised with the selector's key itself drew the neural surrogate's initial weights as the
# very normals of the simulated outcomes (order MCMC's starting orders from that key's splits).
REFIT_STREAM = 0x52454654


def refit_key(select_key: Array) -> Array:
    """The key a selector refits the posterior to its observation with (the policy's
    ``policy.refit_posterior`` and ``plugin_active`` alike, so they refit the same posterior)."""
    return jax.random.fold_in(select_key, REFIT_STREAM)


def make_plugin_gain_selector(scm: SCM, surrogate: Surrogate, n_draws: int = 16,
                              n_values: int = 2) -> Selector:
    """The expected-gain chooser without the truth: a data-only reference.

    Same candidates and criterion as :func:`make_expected_gain_selector`, but outcomes are
    simulated from a *plug-in* SCM (the posterior's point-estimate graph, weights and noise
    fitted to the buffer by :func:`fit_linear_scm`) and the expected SHD is measured against
    that point estimate. ``scm`` (same signature as the oracle) only lends shapes, mask and
    range; nothing true is read (a test swaps in a wrong SCM and gets the same choices). A
    cyclic point estimate (rare: pairs are decided one by one) is simulated by the same d
    fixed-point sweeps as a DAG, so only approximately.

    Keys as the policy's (the refit from :func:`refit_key`, outcomes from
    :func:`lookahead_key`), so on the same cell it makes exactly the choices of the untrained
    policy's mode (its learned logits start at 0), and a paired comparison with the policy is
    not diluted by the two drawing different outcomes (which alone moved F1-AUC 1-10 by up to
    0.025 over 50 validation seeds; docs/EXPERIMENTS.md).
    """

    def select(key: Array, obs: Observation, params: Any = None) -> Action:
        buf = obs.buffer
        state = surrogate.update(surrogate.init(refit_key(key), obs.var_mask), buf.values,
                                 buf.intervened, buf.valid)
        # Above the exact posterior's size the refitted chains mix worse than the episode's
        # (obs.probs, the posterior's features): plug in those; the what-if posterior reads
        # only the refit's statistics and candidates, so its chains are compiled away.
        probs = surrogate.edge_probs(state) if surrogate.what_if is None else obs.probs
        sim, shift, ref = plugin_simulator(probs, buf, scm)
        return _best_expected_gain(lookahead_key(key), obs, surrogate, state, sim, shift, ref,
                                   n_draws, n_values)

    return select


def make_plugin_selector(surrogate: Surrogate, n_draws: int, n_values: int = 2) -> Selector:
    """``plugin_active``: :func:`make_plugin_gain_selector` with shapes, mask and range read
    from the observation, so one selector serves every cell (its ``scm`` lent nothing else)."""

    def select(key: Array, obs: Observation, params: Any = None) -> Action:
        shapes = SCM.without_graph(obs.target, obs.var_mask, obs.low, obs.high)
        return make_plugin_gain_selector(shapes, surrogate, n_draws, n_values)(key, obs)

    return select


def observational_selector(key: Array, obs: Observation, params: Any = None) -> Action:
    """No intervention: the step draws one more observational sample."""
    return Action(jnp.asarray(-1), jnp.asarray(0.0), jnp.asarray(0.0), jnp.asarray(False))


# --------------------------------------------------------------------------- the episode

@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Shape-setting settings of one Phase-2 episode (all static under jit)."""

    n_observational: int = 30
    n_interventions: int = 50
    surrogate: SurrogateConfig = SurrogateConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    # Outcomes per candidate of ``plugin_active`` (a number, or "auto" as the policy's acting
    # lookahead: ``policy.resolve_lookahead_draws``), so it acts at the policy's draws.
    lookahead_draws: int | str = "auto"

    def __post_init__(self) -> None:
        # Checked here so that the Python API refuses what the CLIs refuse, in one line,
        # instead of a shape error from inside a jitted episode.
        from causal_grpo.errors import UserError
        from causal_grpo.options import is_integer, shown
        for name, low in (("n_observational", 2), ("n_interventions", 0)):
            v = getattr(self, name)
            if not is_integer(v) or v < low:
                raise UserError(f"EpisodeConfig.{name} must be an integer >= {low}, "
                                f"got {shown(v)}")
        for name, kind in (("surrogate", SurrogateConfig), ("bootstrap", BootstrapConfig)):
            if not isinstance(getattr(self, name), kind):
                raise UserError(f"EpisodeConfig.{name} must be a {kind.__name__}, got "
                                f"{shown(getattr(self, name))}")

    @property
    def capacity(self) -> int:
        return self.n_observational + self.n_interventions


class StepRecord(NamedTuple):
    """Per-step metrics, each (T + 1,) for one episode (step 0 = after observational data).

    ``chain_gap`` is the posterior's own convergence figure (``Surrogate.chain_gap``: largest
    edge-marginal disagreement between MCMC chains; 0 for the exact DP and the neural
    surrogate), the others compare it with the truth.
    """

    f1: Array
    shd: Array
    precision: Array
    recall: Array
    parent_f1: Array
    parent_shd: Array
    expected_shd: Array
    auprc: Array
    chain_gap: Array
    target_value: Array
    best_target: Array
    variable: Array
    value: Array


class EpisodeResult(NamedTuple):
    record: StepRecord
    final_probs: Array     # (d, d)
    buffer: Buffer         # all data of the episode


def graph_metrics(scm: SCM, probs: Array) -> dict:
    """Every per-step score of edge probabilities ``probs`` against ``scm``'s graph."""
    pred = M.posterior_graph(probs, scm.var_mask)
    g = M.structure_metrics(scm.adj, pred, scm.var_mask)
    p = M.parent_metrics(scm.adj, pred, scm.target, scm.var_mask)
    return dict(f1=g["f1"], shd=g["shd"], precision=g["precision"], recall=g["recall"],
                parent_f1=p["parent_f1"], parent_shd=p["parent_shd"],
                expected_shd=M.expected_shd(scm.adj, probs, scm.var_mask),
                auprc=M.average_precision(scm.adj, probs, scm.var_mask))


def _metrics(scm: SCM, surrogate: Surrogate, state: Any) -> dict:
    return dict(graph_metrics(scm, surrogate.edge_probs(state)),
                chain_gap=surrogate.chain_gap(state))


def cell_keys(key: Array) -> dict:
    """Named subkeys of one cell; none depends on the method (paired comparisons)."""
    names = ("obs", "noise", "select", "bootstrap", "surrogate")
    return dict(zip(names, jax.random.split(key, len(names))))


def observe(scm: SCM, buffer: Buffer, step: Array, feature_probs: Array) -> Observation:
    """The selector's observation of ``buffer``; features come from ``feature_probs``. Reads
    only the target, mask and range of ``scm``."""
    feats = features_from_probs(feature_probs, buffer, scm.target, scm.var_mask)
    return Observation(buffer, feature_probs, feats, scm.target, scm.var_mask, scm.low, scm.high,
                       step)


class EpisodeStart(NamedTuple):
    """An episode before its first intervention: named keys (:func:`cell_keys`), the
    observational samples x0 (n0, d), the buffer holding them, the surrogate's state after
    them, and the exogenous noise of every step (max(T, 1), d)."""

    keys: dict
    x0: Array
    buffer: Buffer
    state: Any
    eps: Array


def start_episode(key: Array, scm: SCM, surrogate: Surrogate, n_observational: int,
                  capacity: int, n_steps: int) -> EpisodeStart:
    """The one episode start of both phases and the seed API: same cell key, same data."""
    ks = cell_keys(key)
    x0 = sample_n(ks["obs"], scm, n_observational)
    buffer = Buffer.empty(capacity, scm.d)
    buffer = buffer._replace(values=buffer.values.at[:n_observational].set(x0),
                             valid=buffer.valid.at[:n_observational].set(True))
    state = surrogate.update(surrogate.init(ks["surrogate"], scm.var_mask), x0,
                             jnp.zeros_like(x0, bool), jnp.ones((n_observational,), bool))
    # max(T, 1): a scan body is traced even when T = 0 (observational-only budgets).
    eps = jax.random.normal(ks["noise"], (max(n_steps, 1), scm.d))
    return EpisodeStart(ks, x0, buffer, state, eps)


def run_episode(key: Array, scm: SCM, cfg: EpisodeConfig, surrogate: Surrogate,
                selector: Selector, params: Any = None, use_bootstrap: bool | Array = False
                ) -> EpisodeResult:
    """One Phase-2 episode for one (scm, seed); jittable, vmap over keys/SCMs at the call site.

    Args:
      key: the cell key (see :func:`cell_keys`).
      scm: the SCM (possibly padded).
      cfg: episode shape and surrogate/bootstrap settings.
      surrogate: structure learner (fresh state each episode; learns from data only).
      selector: chooses each intervention.
      params: selector parameters (a policy's weights), or None.
      use_bootstrap: feed the selector bootstrap features (true graph + decaying noise) instead
        of the surrogate's; only the labelled ``grpo_bootstrap`` reference does this.
    """
    d, n0, T = scm.d, cfg.n_observational, cfg.n_interventions
    ks, x0, buffer, state, eps = start_episode(key, scm, surrogate, n0, cfg.capacity, T)
    noise_b = bootstrap_noise(ks["bootstrap"], d)
    best0 = jnp.min(x0[:, scm.target])
    rec0 = dict(_metrics(scm, surrogate, state), target_value=jnp.mean(x0[:, scm.target]),
                best_target=best0, variable=jnp.asarray(-1), value=jnp.asarray(0.0))

    def step(carry, t):
        state, buffer, best = carry
        probs = surrogate.edge_probs(state)
        fprobs = jnp.where(use_bootstrap, bootstrap_probs(scm.adj, noise_b, t, cfg.bootstrap), probs)
        obs = observe(scm, buffer, t, fprobs)
        act = selector(jax.random.fold_in(ks["select"], t), obs, params)
        value = jnp.clip(act.value, scm.low, scm.high)
        do_mask = (jnp.arange(d) == act.variable) & act.intervene
        x = propagate(scm, eps[t], do_mask, jnp.where(do_mask, value, 0.0))
        buffer = buffer.write(n0 + t, x, do_mask)
        state = surrogate.update(state, x[None], do_mask[None], jnp.ones((1,), bool))
        best = jnp.minimum(best, x[scm.target])
        rec = dict(_metrics(scm, surrogate, state), target_value=x[scm.target],
                   best_target=best, variable=jnp.where(act.intervene, act.variable, -1),
                   value=jnp.where(act.intervene, value, 0.0))
        return (state, buffer, best), rec

    (state, buffer, _), recs = jax.lax.scan(step, (state, buffer, best0), jnp.arange(T))
    record = StepRecord(**{k: jnp.concatenate([jnp.asarray(rec0[k])[None].astype(recs[k].dtype), recs[k]])
                           for k in StepRecord._fields})
    return EpisodeResult(record, surrogate.edge_probs(state), buffer)


BUILTIN_METHODS = (Method.RANDOM, Method.ROUND_ROBIN, Method.UNCERTAINTY, Method.ORACLE,
                   Method.OBSERVATIONAL)


def _typed(act: Action) -> Action:
    return Action(jnp.asarray(act.variable, jnp.int32), jnp.asarray(act.value, jnp.float32),
                  jnp.asarray(act.log_prob, jnp.float32), jnp.asarray(act.intervene, bool))


def builtin_selector(method_id: Array, scm: SCM) -> Selector:
    """All non-learned selectors in one, chosen by ``method_id`` (index in BUILTIN_METHODS).

    With an unbatched ``method_id`` only the chosen branch executes, so every built-in method
    shares one compiled program per SCM size.
    """
    oracle = make_oracle_selector(scm.adj)
    branches = [random_selector, round_robin_selector, uncertainty_selector, oracle,
                observational_selector]

    def select(key: Array, obs: Observation, params: Any = None) -> Action:
        return jax.lax.switch(method_id, [lambda k, o, f=f: _typed(f(k, o)) for f in branches],
                              key, obs)

    return select


def make_batch_runner(cfg: EpisodeConfig, d: int, policy_selector: Selector | None = None
                      ) -> Callable:
    """jit(vmap(run_episode)) over cells: ``(keys (S,), scms (S,...), params, method_id)``.

    Without ``policy_selector``: the built-in methods, ``method_id`` = index in
    ``BUILTIN_METHODS``. With it: the learned policy, ``method_id`` = 1 to feed it bootstrap
    features (``grpo_bootstrap``), 0 for surrogate features (``grpo_active``).
    """
    surrogate = make_surrogate(cfg.surrogate, d, cfg.capacity)

    def one(key, scm, params, method_id):
        if policy_selector is None:
            return run_episode(key, scm, cfg, surrogate, builtin_selector(method_id, scm))
        return run_episode(key, scm, cfg, surrogate, policy_selector, params,
                           use_bootstrap=method_id == 1)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))


def make_reference_runner(cfg: EpisodeConfig, d: int,
                          make_selector: Callable[[SCM, Surrogate], Selector]) -> Callable:
    """jit(vmap) over cells ``(keys (S,), scms (S,...))`` for a selector built from each cell's
    SCM and the surrogate (references that see the truth, e.g. the expected-gain oracle)."""
    surrogate = make_surrogate(cfg.surrogate, d, cfg.capacity)

    def one(key, scm):
        return run_episode(key, scm, cfg, surrogate, make_selector(scm, surrogate))

    return jax.jit(jax.vmap(one))


def method_id(method: Method) -> int:
    """The ``method_id`` argument of :func:`make_batch_runner` for ``method``."""
    if method is Method.PLUGIN:     # its own selector, as a policy with surrogate features
        return 0
    if method.needs_policy:
        return int(method.uses_bootstrap)
    return BUILTIN_METHODS.index(method)
