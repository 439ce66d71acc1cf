"""Structure posterior for large d: order MCMC over candidate parent sets (Gadget/BiDAG style).

Each node i gets K candidate parents, re-chosen from the data at every update by forward
selection on node i's non-intervened rows (``select_candidates``; fixed shape (d, K)). Its
parent sets are the subsets of size <= k of its candidates, scored exactly as by the exact
posterior (``surrogate_bayes.set_scores``: BIC or BGe on the non-intervened rows of the
node), so edges outside the candidate sets have probability 0. With the order-modular prior, an order's
weight is ``prod_i alpha_i(U_i)``, ``U_i`` = candidates of i placed before it and
``alpha_i(U) = sum_{S ⊆ U} exp(score_i(S))``; ``alpha_i`` is tabulated over all 2^K subsets of
the candidates by one zeta transform, so scoring an order is d*K lookups.

Several chains (vmapped) run Metropolis-Hastings on orders (adjacent or random
transpositions). The chains' orders are part of the state and carried from one update to the
next; the first update with data runs ``burn_in`` steps instead of ``mcmc_steps``. Edge
marginals are Rao-Blackwellised per visited order,
``P(c -> i | order) = 1 - alpha_i(U_i \\ c) / alpha_i(U_i)`` for c in U_i (the sets inside U_i
without c are the sets inside U_i \\ c), averaged over the second half of each chain's steps
and over chains. ``chain_gap``, the largest difference of an edge marginal between two
chains, is the convergence figure.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo.scm import EXACT, unit_scale
from causal_grpo.surrogate_bayes import (AnalyticConfig, Stats, _subset_sum, add_rows,
                                         empty_stats, set_scores)

Array = jax.Array


class McmcState(NamedTuple):
    stats: Stats
    var_mask: Array
    edge_probs: Array      # (d, d) cached P(i -> j)
    orders: Array          # (C, d) each chain's order (the node at each position)
    cand: Array            # (d, K) candidate parents of each node; d = no candidate
    chain_gap: Array       # () largest edge-marginal difference between two chains
    key: Array
    # True until an update has brought rows: the next update burns the chains in. A constant
    # wherever the state is (init True, update False on constant rows), so under vmap and
    # scan the choice stays a real branch and a refit whose chains are unused compiles them
    # away.
    fresh: Array


@functools.lru_cache(maxsize=None)
def candidate_sets(K: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subsets of size <= k of K candidate slots: bitmask (P,), slots (P, k) padded with K,
    size (P,)."""
    sets = [s for size in range(k + 1) for s in itertools.combinations(range(K), size)]
    mask = np.array([sum(1 << b for b in s) for s in sets], np.int32)
    slots = np.full((len(sets), k), K, np.int32)
    for p, s in enumerate(sets):
        slots[p, :len(s)] = s
    return mask, slots, np.array([len(s) for s in sets], np.int32)


def select_candidates(stats: Stats, var_mask: Array, K: int) -> Array:
    """(d, K) candidate parents of each node by forward selection on its non-intervened rows.

    Per node i: repeatedly add the real variable with the largest squared partial correlation
    with X_i given the candidates chosen so far (one sweep of node i's covariance per step), so
    a variable whose association with X_i is explained by a chosen one (an ancestor behind a
    parent) yields its place to one that adds information (another parent, a child, a spouse).
    Slots left when fewer than K variables carry any are d; padding nodes get none.
    """
    d = var_mask.shape[0]

    def one(i, cov):
        ok = var_mask & (jnp.arange(d) != i) & var_mask[i]

        def step(carry, _):
            s, free = carry
            dg = jnp.diagonal(s)
            r2 = s[i] ** 2 / jnp.maximum(dg[i] * dg, 1e-30)
            live = free & (dg > 1e-6 * jnp.diagonal(cov))
            r2 = jnp.where(live, r2, -1.0)
            j = jnp.argmax(r2)
            s = s - jnp.outer(s[:, j], s[j]) / jnp.maximum(s[j, j], 1e-30)
            return (s, free.at[j].set(False)), jnp.where(r2[j] >= 0.0, j, d)

        return jax.lax.scan(step, (cov, ok), None, length=K)[1]

    # Small units to order one first (exact powers of two), as the scores do: the floors above
    # are sized for it, and products of two small variances underflow float32.
    sc = unit_scale(jnp.diagonal(stats.m2, axis1=1, axis2=2) / jnp.maximum(stats.n, 1.0)[:, None])
    m2 = stats.m2 / (sc[:, :, None] * sc[:, None, :])
    return jax.vmap(one)(jnp.arange(d), m2).astype(jnp.int32)


def _pred_sets(order: Array, cand: Array) -> Array:
    """(d,) bitmask over each node's candidate slots of those placed before it in ``order``."""
    d, K = cand.shape
    pos = jnp.zeros((d + 1,), jnp.int32).at[order].set(jnp.arange(d)).at[d].set(d)
    before = pos[cand] < pos[:d, None]
    return jnp.sum(jnp.where(before, 1 << jnp.arange(K), 0), axis=1)


def _log_weight(order: Array, alpha: Array, cand: Array) -> Array:
    """() log weight of ``order``: sum_i log alpha_i(U_i)."""
    return jnp.sum(alpha[jnp.arange(cand.shape[0]), _pred_sets(order, cand)])


def _order_edges(order: Array, alpha: Array, cand: Array) -> Array:
    """(d, K) P(cand[i, s] -> i | order), Rao-Blackwellised over the parent sets."""
    d, K = cand.shape
    rows, bits = jnp.arange(d), 1 << jnp.arange(K)
    u = _pred_sets(order, cand)
    without = u[:, None] & ~bits                                       # (d, K)
    p = 1.0 - jnp.exp(alpha[rows[:, None], without] - alpha[rows, u][:, None])
    return jnp.where((u[:, None] & bits) != 0, jnp.clip(p, 0.0, 1.0), 0.0)


def _chain(key: Array, order: Array, alpha: Array, cand: Array, steps: int
           ) -> tuple[Array, Array, Array]:
    """One chain: ``steps`` MH proposals from ``order``; (final order, (d, K) edge average over
    the second half, (steps, d) the order after each step)."""
    d = cand.shape[0]

    def step(carry, xs):
        o, cur, acc = carry
        k, keep = xs
        k1, k2, k3, k4 = jax.random.split(k, 4)
        i = jax.random.randint(k1, (), 0, d)
        j = jnp.where(jax.random.bernoulli(k3, 0.5), jnp.minimum(i + 1, d - 1),
                      jax.random.randint(k2, (), 0, d))
        prop = o.at[i].set(o[j]).at[j].set(o[i])
        new = _log_weight(prop, alpha, cand)
        accept = jnp.log(jax.random.uniform(k4)) < new - cur
        o = jnp.where(accept, prop, o)
        cur = jnp.where(accept, new, cur)
        acc = acc + jnp.where(keep, _order_edges(o, alpha, cand), 0.0)
        return (o, cur, acc), o

    keep = jnp.arange(steps) >= steps // 2
    init = (order, _log_weight(order, alpha, cand), jnp.zeros(cand.shape, jnp.float32))
    (order, _, acc), visited = jax.lax.scan(step, init, (jax.random.split(key, steps), keep))
    return order, acc / (steps - steps // 2), visited


def _alpha(stats: Stats, var_mask: Array, cand: Array, cfg: AnalyticConfig,
           nodes: Array | None = None) -> Array:
    """(d, 2^K) log alpha_i(U) over the subsets U of each node's candidate slots; (A, 2^K) for
    the nodes ``nodes`` (A,) alone."""
    d, K = cand.shape
    k = min(cfg.max_indegree, K)
    mask, slots, size = candidate_sets(K, k)
    cand_pad = jnp.concatenate([cand, jnp.full((d, 1), d, jnp.int32)], axis=1)
    idx = (cand_pad if nodes is None else cand_pad[nodes])[:, slots]  # (d or A, P, k)
    scores = set_scores(stats, var_mask, idx, size, cfg.penalty, cfg.score, nodes)
    # A set that uses a slot without a candidate would repeat a smaller set: drop it.
    scores = jnp.where(jnp.sum(idx < d, axis=-1) == size, scores, -jnp.inf)
    beta = jnp.full((idx.shape[0], 1 << K), -jnp.inf, scores.dtype).at[:, mask].set(scores)
    return _subset_sum(beta, K)


def _scatter_edges(e: Array, cand: Array) -> Array:
    """(d, d) edge probabilities from (d, K) probabilities of each node's candidate slots."""
    d = cand.shape[0]
    return jnp.zeros((d + 1, d), jnp.float32).at[cand, jnp.arange(d)[:, None]].add(e)[:d]


def mcmc_posterior(key: Array, stats: Stats, var_mask: Array, orders: Array, cfg: AnalyticConfig,
                   steps: int) -> tuple[Array, Array, Array, Array]:
    """One update of the chains on ``stats``, ``steps`` proposals each: (edge probs (d, d),
    orders (C, d), cand (d, K), chain_gap ())."""
    K = min(cfg.candidates, var_mask.shape[0] - 1)
    cand = select_candidates(stats, var_mask, K)
    alpha = _alpha(stats, var_mask, cand, cfg)
    run = functools.partial(_chain, alpha=alpha, cand=cand, steps=steps)
    orders, e, _ = jax.vmap(run)(jax.random.split(key, orders.shape[0]), orders)  # e: (C, d, K)
    gap = jnp.max(jnp.max(e, 0) - jnp.min(e, 0))
    return _scatter_edges(e.mean(0), cand), orders, cand, gap


def init_state(cfg: AnalyticConfig, d: int, key: Array, var_mask: Array) -> McmcState:
    k_state, k_orders = jax.random.split(key)
    keys = jax.random.split(k_orders, cfg.chains)
    orders = jax.vmap(lambda k: jax.random.permutation(k, d))(keys)
    K = min(cfg.candidates, d - 1)
    return McmcState(empty_stats(d), var_mask.astype(bool), jnp.zeros((d, d), jnp.float32),
                     orders.astype(jnp.int32), jnp.full((d, K), d, jnp.int32),
                     jnp.zeros((), jnp.float32), k_state, jnp.asarray(True))


def update_state(cfg: AnalyticConfig, state: McmcState, values: Array, intervened: Array,
                 valid: Array) -> McmcState:
    stats = add_rows(state.stats, values, intervened, valid)
    key, sub = jax.random.split(state.key)

    def run(steps):
        return lambda: mcmc_posterior(sub, stats, state.var_mask, state.orders, cfg, steps)

    # The chains start at random orders: the first update with rows runs cfg.burn_in steps.
    probs, orders, cand, gap = jax.lax.cond(state.fresh, run(cfg.burn_in), run(cfg.mcmc_steps))
    return McmcState(stats, state.var_mask, probs, orders, cand, gap, key,
                     state.fresh & ~jnp.any(valid))


# --------------------------------------------------------------------------- what-if updates
#
# The lookahead asks "what would the posterior be after this one more row?" for many rows. A
# full update (candidate selection, rescoring every node, 4 chains x 1000 steps) costs ~28 ms
# at d = 100, so the what-if posterior keeps the candidate sets fixed and, instead of new MCMC
# steps, reweights a fixed sample of orders from the current posterior by importance
# sampling: order o's weight after the row is W_new(o) / W_now(o), and the edge marginals are
# the weighted mean of the Rao-Blackwellised marginals at each order under the new scores. The
# sample sits in one mode (see what_if_state), so an outcome moves weight between orders near
# it; an orientation that every order of the sample agrees on stays where it is.
# Only the nodes that have an intervened variable among their candidates are rescored (at
# most 2K, strongest candidate first): those are the parent sets an intervention informs; the
# other nodes' scores would move by one more ordinary sample, which they ignore.

WHAT_IF_STEPS = 32    # MCMC steps per chain that collect the order sample
WHAT_IF_THIN = 8      # keep every 8th: chains x 4 orders
# The what-if chains' key stream. Not fold_in(key, 1): under partitionable threefry that is
# split(key)[1], the key of the next update's chains, whose proposals would then repeat the
# ones that scored the candidate interventions.
WHAT_IF_STREAM = 0x57484946


class WhatIfState(NamedTuple):
    """The what-if posterior: fixed ``cand`` (d, K) and ``orders`` (O, d) sampled under the
    statistics it was made from, their log weights then ``log_w0`` (O,), current ``stats``,
    log alpha tables ``alpha`` (d, 2^K) and ``edge_probs`` (d, d)."""

    stats: Stats
    var_mask: Array
    cand: Array
    orders: Array
    log_w0: Array
    alpha: Array
    edge_probs: Array


def _reweighted_edges(alpha: Array, cand: Array, orders: Array, log_w0: Array) -> Array:
    """(d, d) edge probabilities of the order sample reweighted to ``alpha``."""
    log_w = jax.vmap(_log_weight, (0, None, None))(orders, alpha, cand)
    r = jax.nn.softmax(log_w - log_w0)
    e = jax.vmap(_order_edges, (0, None, None))(orders, alpha, cand)  # (O, d, K)
    return _scatter_edges(jnp.einsum("o,odk->dk", r, e, precision=EXACT), cand)


def order_of(probs: Array) -> Array:
    """(d,) an order that edge probabilities ``probs`` (d, d) suggest: by expected in-degree
    minus expected out-degree, sources first."""
    return jnp.argsort(probs.sum(0) - probs.sum(1)).astype(jnp.int32)


def what_if_state(cfg: AnalyticConfig, state: McmcState, probs: Array) -> WhatIfState:
    """The what-if posterior of ``state``'s data: its candidates, and orders collected every
    ``WHAT_IF_THIN`` of ``WHAT_IF_STEPS`` steps of its number of chains, all started at
    :func:`order_of` ``probs`` (cost: chains x 32 steps, a thirtieth of an update's chain steps at
    the default 1000).

    ``probs`` is the caller's best belief, e.g. the episode posterior's marginals. All chains
    start at one order, so the sample sits in one mode: it keeps little of the episode
    posterior's orientation uncertainty (which at d >= 20 lies mostly between its chains), and
    a pair whose orientation that posterior leaves open is often decided in it (summed
    orientation entropy 3.4 nats against 18.0 on sf100 after 30 + 5 rows). That is chosen: a
    sample started from the episode's own chain orders kept the uncertainty and made the
    lookahead worse on validation seeds (docs/BENCHMARKS.md, "The what-if sample started from
    the episode's chains").
    """
    alpha = _alpha(state.stats, state.var_mask, state.cand, cfg)
    run = functools.partial(_chain, alpha=alpha, cand=state.cand, steps=WHAT_IF_STEPS)
    keys = jax.random.split(jax.random.fold_in(state.key, WHAT_IF_STREAM), state.orders.shape[0])
    start = jnp.broadcast_to(order_of(probs), state.orders.shape)
    visited = jax.vmap(run)(keys, start)[2][:, WHAT_IF_THIN - 1::WHAT_IF_THIN]
    orders = visited.reshape(-1, visited.shape[-1])
    log_w0 = jax.vmap(_log_weight, (0, None, None))(orders, alpha, state.cand)
    return WhatIfState(state.stats, state.var_mask, state.cand, orders, log_w0, alpha,
                       _reweighted_edges(alpha, state.cand, orders, log_w0))


def what_if_update(cfg: AnalyticConfig, state: WhatIfState, values: Array, intervened: Array,
                   valid: Array) -> WhatIfState:
    """Add rows to the what-if posterior: rescore the parent sets of the nodes with an
    intervened candidate and reweight the fixed orders (no candidate selection, no MCMC step).
    """
    d, K = state.cand.shape
    stats = add_rows(state.stats, values, intervened, valid)
    hit = jnp.concatenate([jnp.any(valid[:, None] & intervened, axis=0), jnp.zeros((1,), bool)])
    # Rank of each node's strongest intervened candidate (K for slot 0), 0 when it has none.
    rank = jnp.max(jnp.where(hit[state.cand], K - jnp.arange(K), 0), axis=1)
    top, nodes = jax.lax.top_k(rank, min(2 * K, d))
    fresh = _alpha(stats, state.var_mask, state.cand, cfg, nodes)
    alpha = state.alpha.at[nodes].set(jnp.where(top[:, None] > 0, fresh, state.alpha[nodes]))
    probs = _reweighted_edges(alpha, state.cand, state.orders, state.log_w0)
    return state._replace(stats=stats, alpha=alpha, edge_probs=probs)
