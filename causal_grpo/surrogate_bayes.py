"""Exact Bayesian posterior over DAGs for linear-Gaussian data with interventions.

Model (Koivisto & Sood 2004; Koivisto 2006; Friedman & Koller 2003):

* Local score of parent set S for node i: BIC of the Gaussian linear regression of X_i on X_S
  (with intercept), fitted only on the rows where X_i was *not* intervened on. Rows in which a
  parent was intervened are kept: that is what makes interventional data orient edges.
  ``score_i(S) = -n_i/2 log(RSS_i(S)/n_i) - |S|/2 log(n_i) + log q(|S|)``, |S| <= max_indegree,
  with the size-uniform prior ``q(|S|) = 1 / C(d-1, |S|)``.
* Order-modular prior: ``P(G) ∝ #{orders consistent with G} * prod_i q(Pa_i)``; the posterior
  is summed *exactly* over all DAGs by dynamic programming over variable orders::

      alpha_i(U) = sum_{S ⊆ U} exp(score_i(S))                      (subset-sum / zeta transform)
      L(S)       = sum_{i ∈ S} L(S \\ i) alpha_i(S \\ i)              (forward, over subsets)
      R(T)       = sum_{i ∉ T} alpha_i(T) R(T ∪ i)                   (backward)
      P(Pa_i = S) ∝ exp(score_i(S)) sum_{U ⊇ S, i ∉ U} L(U) R(U ∪ i)  (superset-sum transform)

  Edge marginals ``P(j -> i) = sum_{S ∋ j} P(Pa_i = S)`` are exact under this model. All of it
  runs in log space; the transforms operate on contiguous reshapes of (d, 2^(d-1)) arrays
  (one per node, indexed by subsets of the other d-1 variables) and the DP on static index
  tables by subset size, so a posterior is one fixed-shape XLA program.
* Above ``exact_max_d`` variables the sum over orders is replaced by order MCMC (adjacent and
  random transpositions, Metropolis–Hastings) with Rao–Blackwellised edge marginals, a
  DAG-consistent approximation warm-started from the previous order at each update.

Sufficient statistics (per node: count, mean and centred cross-products of all variables over
its non-intervened rows) are merged incrementally (Chan et al.), so adding one sample is O(d^3).
Padding variables (``var_mask = False``) get only the empty parent set and are nobody's parent,
which leaves the posterior of the real variables exactly unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from causal_grpo.surrogate import Surrogate

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AnalyticConfig:
    """Settings of the exact DAG-posterior surrogate.

    Attributes:
      max_indegree: largest parent set scored (static).
      exact_max_d: largest padded d handled by the exact DP; above it, order MCMC.
      penalty: multiplier of the BIC complexity term (1.0 = BIC).
      mcmc_steps: order-MCMC proposals per update (d > exact_max_d only).
      mcmc_thin: keep every ``mcmc_thin``-th order for the edge average.
    """

    max_indegree: int = 3
    exact_max_d: int = 16
    penalty: float = 1.0
    mcmc_steps: int = 400
    mcmc_thin: int = 4


# --------------------------------------------------------------------------- static tables

class Tables(NamedTuple):
    """Index tables for one (d, max_indegree); all NumPy, closed over as jit constants."""

    d: int
    k: int
    ps_local: np.ndarray      # (P,) int: local bitmask (over the d-1 other variables) of each set
    ps_size: np.ndarray       # (P,) int
    ps_global: np.ndarray     # (d, P, k) int: global parent indices, padded with d
    ps_member: np.ndarray     # (d, P, d) float32: membership of global variable j in set p of i
    ps_gmask: np.ndarray      # (d, P) int32: global bitmask of set p of node i (d <= 30)
    glob: np.ndarray          # (d, 2^(d-1)) int: global bitmask of node i's local subset u
    fwd: tuple                # per layer k=1..d: (sets (C,), pred (C,k), flat_alpha (C,k))
    bwd: tuple                # per layer t=d-1..0: (sets (C,), nxt (C,d-t), flat_alpha (C,d-t))


def _local_to_global(i: int, u: int, d: int) -> int:
    g = 0
    for b in range(d - 1):
        if u >> b & 1:
            g |= 1 << (b if b < i else b + 1)
    return g


def _global_to_local(i: int, g: int, d: int) -> int:
    u = 0
    for v in range(d):
        if v != i and g >> v & 1:
            u |= 1 << (v if v < i else v - 1)
    return u


@functools.lru_cache(maxsize=None)
def build_tables(d: int, k: int, with_dp: bool = True) -> Tables:
    """Enumerate parent sets and the DP index tables once (cached per (d, k))."""
    k = min(k, d - 1)
    sets = [s for size in range(k + 1) for s in itertools.combinations(range(d - 1), size)]
    ps_local = np.array([sum(1 << b for b in s) for s in sets], np.int32)
    ps_size = np.array([len(s) for s in sets], np.int32)
    P = len(sets)
    ps_global = np.full((d, P, max(k, 1)), d, np.int32)
    ps_member = np.zeros((d, P, d), np.float32)
    ps_gmask = np.zeros((d, P), np.int32)
    for i in range(d):
        for p, s in enumerate(sets):
            for m, b in enumerate(s):
                g = b if b < i else b + 1
                ps_global[i, p, m] = g
                ps_member[i, p, g] = 1.0
                ps_gmask[i, p] |= 1 << g
    if not with_dp:
        return Tables(d, k, ps_local, ps_size, ps_global, ps_member, ps_gmask,
                      np.zeros((d, 0), np.int32), (), ())
    n_loc = 1 << (d - 1)
    glob = np.zeros((d, n_loc), np.int32)
    for i in range(d):
        low = np.arange(n_loc, dtype=np.int32)
        # Insert a zero bit at position i: bits below i stay, bits at/above i shift up by one.
        glob[i] = (low & ((1 << i) - 1)) | ((low >> i) << (i + 1))

    def loc(i: int, g: int) -> int:
        # Local index: remove bit i from the global mask.
        return (g & ((1 << i) - 1)) | ((g >> (i + 1)) << i)

    fwd = []
    for size in range(1, d + 1):
        sets_k = [sum(1 << v for v in c) for c in itertools.combinations(range(d), size)]
        pred = np.zeros((len(sets_k), size), np.int32)
        flat = np.zeros((len(sets_k), size), np.int32)
        for r, g in enumerate(sets_k):
            members = [v for v in range(d) if g >> v & 1]
            for m, v in enumerate(members):
                rest = g & ~(1 << v)
                pred[r, m] = rest
                flat[r, m] = v * n_loc + loc(v, rest)
        fwd.append((np.array(sets_k, np.int32), pred, flat))
    bwd = []
    for size in range(d - 1, -1, -1):
        sets_t = [sum(1 << v for v in c) for c in itertools.combinations(range(d), size)]
        nxt = np.zeros((len(sets_t), d - size), np.int32)
        flat = np.zeros((len(sets_t), d - size), np.int32)
        for r, g in enumerate(sets_t):
            outside = [v for v in range(d) if not g >> v & 1]
            for m, v in enumerate(outside):
                nxt[r, m] = g | (1 << v)
                flat[r, m] = v * n_loc + loc(v, g)
        bwd.append((np.array(sets_t, np.int32), nxt, flat))
    return Tables(d, k, ps_local, ps_size, ps_global, ps_member, ps_gmask, glob,
                  tuple(fwd), tuple(bwd))


# --------------------------------------------------------------------------- statistics

class Stats(NamedTuple):
    """Per-node sufficient statistics over that node's non-intervened rows.

    n: (d,) row counts; mean: (d, d) mean of every variable; m2: (d, d, d) centred
    cross-products (``m2[i] / n[i]`` is the MLE covariance used to score node i).
    """

    n: Array
    mean: Array
    m2: Array


def empty_stats(d: int) -> Stats:
    return Stats(jnp.zeros((d,), jnp.float32), jnp.zeros((d, d), jnp.float32),
                 jnp.zeros((d, d, d), jnp.float32))


def add_rows(stats: Stats, values: Array, intervened: Array, valid: Array) -> Stats:
    """Merge rows (r, d) into the statistics (Chan et al. parallel update), per node.

    Row n counts for node i when it is valid and X_i was not intervened in it.
    """
    w = (valid[:, None] & ~intervened.astype(bool)).astype(jnp.float32).T  # (d, r)
    nb = w.sum(1)                                                          # (d,)
    safe = jnp.maximum(nb, 1.0)
    mean_b = (w @ values) / safe[:, None]                                  # (d, d)
    cen = values[None, :, :] - mean_b[:, None, :]                          # (d, r, d)
    m2_b = jnp.einsum("ir,ira,irb->iab", w, cen, cen)
    n = stats.n + nb
    frac = jnp.where(n > 0, nb / jnp.maximum(n, 1.0), 0.0)
    delta = mean_b - stats.mean
    mean = stats.mean + delta * frac[:, None]
    m2 = stats.m2 + m2_b + jnp.einsum("ia,ib->iab", delta, delta) * (stats.n * frac)[:, None, None]
    return Stats(n, mean, m2)


def _chol_rss(a: Array, b: Array, c: Array, k: int) -> Array:
    """Residual c - b^T a^{-1} b for a batch of k x k SPD systems, Cholesky unrolled.

    a: (..., k, k); b: (..., k); c: (...). Unrolled on purpose: XLA:CPU turns a batch of tiny
    LAPACK solves into a loop of library calls, while these are a few fused elementwise ops.
    """
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = a[..., j, j] - sum(L[j][m] ** 2 for m in range(j)) if j else a[..., j, j]
        L[j][j] = jnp.sqrt(jnp.maximum(s, 1e-12))
        for r in range(j + 1, k):
            t = a[..., r, j] - sum(L[r][m] * L[j][m] for m in range(j)) if j else a[..., r, j]
            L[r][j] = t / L[j][j]
    z2 = 0.0
    z = []
    for j in range(k):
        t = b[..., j] - sum(L[j][m] * z[m] for m in range(j)) if j else b[..., j]
        z.append(t / L[j][j])
        z2 = z2 + z[j] ** 2
    return c - z2


def local_scores(stats: Stats, var_mask: Array, tab: Tables, penalty: float) -> Array:
    """(d, P) BIC local scores (log prior included); -inf for disallowed sets."""
    d, k = tab.d, tab.k
    n = jnp.maximum(stats.n, 1.0)
    cov = stats.m2 / n[:, None, None]                                 # (d, d, d)
    # Pad each node's covariance with a dummy variable d (unit variance, uncorrelated), the
    # filler of parent sets smaller than k: it adds nothing to the fit.
    covp = jnp.pad(cov, ((0, 0), (0, 1), (0, 1)))
    covp = covp.at[:, d, d].set(1.0)
    idx = jnp.asarray(tab.ps_global)                                   # (d, P, k)
    node = jnp.arange(d)[:, None, None]
    a = covp[node[..., None], idx[..., :, None], idx[..., None, :]]    # (d, P, k, k)
    diag = jnp.diagonal(a, axis1=-2, axis2=-1)
    a = a + jnp.eye(k) * (1e-6 * diag[..., :, None] + 1e-9)
    b = covp[node, idx, jnp.arange(d)[:, None, None]]                  # (d, P, k)
    ar = jnp.arange(d)
    c = cov[ar, ar, ar][:, None]                                       # (d, 1) var of X_i
    rss = _chol_rss(a, b, c, k) if k > 0 else jnp.broadcast_to(c, idx.shape[:2])
    rss = jnp.maximum(rss, 1e-6 * c + 1e-12)
    size = jnp.asarray(tab.ps_size, jnp.float32)
    # Size-uniform prior 1 / C(d_real - 1, |S|), with d_real the number of *real* variables so
    # that padding leaves the posterior unchanged.
    m = jnp.maximum(var_mask.sum().astype(jnp.float32) - 1.0, size)
    log_prior = -(gammaln(m + 1.0) - gammaln(size + 1.0) - gammaln(m - size + 1.0))
    score = -0.5 * n[:, None] * jnp.log(rss) - penalty * 0.5 * size * jnp.log(n)[:, None]
    score = score + log_prior
    # Allowed: every member is a real variable, and padding nodes keep only the empty set.
    member = jnp.asarray(tab.ps_member)                                # (d, P, d)
    uses_pad = jnp.einsum("ipj,j->ip", member, (~var_mask).astype(jnp.float32)) > 0
    allowed = ~uses_pad & (var_mask[:, None] | (size == 0)[None, :])
    return jnp.where(allowed, score, -jnp.inf)


# --------------------------------------------------------------------------- exact DP

def _subset_sum(x: Array, nbits: int) -> Array:
    """Log-space zeta transform over the last axis (length 2^nbits): f(U) = ⊕_{S⊆U} x(S)."""
    lead = x.shape[:-1]
    for b in range(nbits):
        y = x.reshape(lead + (1 << (nbits - 1 - b), 2, 1 << b))
        lo, hi = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([lo, jnp.logaddexp(lo, hi)], axis=-2).reshape(lead + (1 << nbits,))
    return x


def _superset_sum(x: Array, nbits: int) -> Array:
    """Log-space superset-sum transform: f(S) = ⊕_{U⊇S} x(U)."""
    lead = x.shape[:-1]
    for b in range(nbits):
        y = x.reshape(lead + (1 << (nbits - 1 - b), 2, 1 << b))
        lo, hi = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([jnp.logaddexp(lo, hi), hi], axis=-2).reshape(lead + (1 << nbits,))
    return x


def _lse(x: Array, axis: int = -1) -> Array:
    m = jnp.max(x, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return jnp.squeeze(m, axis) + jnp.log(jnp.sum(jnp.exp(x - m), axis=axis))


def exact_parent_posterior(scores: Array, tab: Tables) -> Array:
    """(d, P) log posterior of each node's parent sets, summed exactly over all DAGs."""
    d = tab.d
    n_loc = 1 << (d - 1)
    beta = jnp.full((d, n_loc), -jnp.inf, scores.dtype)
    beta = beta.at[:, jnp.asarray(tab.ps_local)].set(scores)
    log_alpha = _subset_sum(beta, d - 1)                               # (d, 2^(d-1))
    a_flat = log_alpha.reshape(-1)

    L = jnp.full((1 << d,), -jnp.inf, scores.dtype).at[0].set(0.0)
    for sets, pred, flat in tab.fwd:
        vals = _lse(L[jnp.asarray(pred)] + a_flat[jnp.asarray(flat)])
        L = L.at[jnp.asarray(sets)].set(vals)
    R = jnp.full((1 << d,), -jnp.inf, scores.dtype).at[(1 << d) - 1].set(0.0)
    for sets, nxt, flat in tab.bwd:
        vals = _lse(R[jnp.asarray(nxt)] + a_flat[jnp.asarray(flat)])
        R = R.at[jnp.asarray(sets)].set(vals)

    glob = jnp.asarray(tab.glob)                                       # (d, 2^(d-1))
    gamma = L[glob] + R[glob | (1 << jnp.arange(d))[:, None]]
    gamma_hat = _superset_sum(gamma, d - 1)
    log_post = scores + gamma_hat[:, jnp.asarray(tab.ps_local)]
    # Each node's parent-set posterior sums to one exactly in theory; normalising per node
    # (rather than dividing by the DP's log Z) keeps float32 round-off from pushing an edge
    # marginal above 1.
    return log_post - _lse(log_post)[:, None]


# --------------------------------------------------------------------------- order MCMC

def _order_node_scores(scores: Array, gmask: Array, pred_mask: Array) -> Array:
    """(d,) log alpha_i(pred_i) given each node's predecessor bitmask (d,)."""
    ok = (gmask & ~pred_mask[:, None]) == 0
    return _lse(jnp.where(ok, scores, -jnp.inf))


def _pred_masks(order: Array, d: int) -> Array:
    pos = jnp.argsort(order)                                           # position of each node
    before = pos[None, :] < pos[:, None]                               # [i, j]: j before i
    return jnp.sum(jnp.where(before, 1 << jnp.arange(d), 0), axis=1).astype(jnp.int32)


def order_mcmc_parent_posterior(key: Array, scores: Array, tab: Tables, order0: Array,
                                steps: int, thin: int) -> tuple[Array, Array]:
    """Order MCMC: (d, P) averaged parent-set posterior and the final order."""
    d = tab.d
    gmask = jnp.asarray(tab.ps_gmask)

    def log_score(order):
        return jnp.sum(_order_node_scores(scores, gmask, _pred_masks(order, d)))

    def step(carry, k):
        order, cur = carry
        k1, k2, k3 = jax.random.split(k, 3)
        i = jax.random.randint(k1, (), 0, d)
        j_adj = jnp.minimum(i + 1, d - 1)
        j_rnd = jax.random.randint(k2, (), 0, d)
        j = jnp.where(jax.random.bernoulli(k3, 0.5), j_adj, j_rnd)
        prop = order.at[i].set(order[j]).at[j].set(order[i])
        new = log_score(prop)
        accept = jnp.log(jax.random.uniform(jax.random.fold_in(k, 7))) < new - cur
        order = jnp.where(accept, prop, order)
        cur = jnp.where(accept, new, cur)
        return (order, cur), order

    _, orders = jax.lax.scan(step, (order0, log_score(order0)), jax.random.split(key, steps))
    kept = orders[thin - 1::thin]

    def post_given(order):
        pm = _pred_masks(order, d)
        ok = (gmask & ~pm[:, None]) == 0
        s = jnp.where(ok, scores, -jnp.inf)
        return jnp.exp(s - _lse(s)[:, None])

    post = jnp.mean(jax.vmap(post_given)(kept), axis=0)
    return jnp.log(post), orders[-1]


# --------------------------------------------------------------------------- surrogate

class AnalyticState(NamedTuple):
    stats: Stats
    var_mask: Array
    edge_probs: Array      # (d, d) cached P(i -> j)
    log_post: Array        # (d, P) log parent-set posterior
    order: Array           # (d,) current order (order MCMC only)
    key: Array


def edge_probs_from_parent_posterior(log_post: Array, tab: Tables) -> Array:
    """(d, d) edge marginals, ``probs[j, i] = P(j -> i)`` from per-node set posteriors."""
    return jnp.einsum("ip,ipj->ji", jnp.exp(log_post), jnp.asarray(tab.ps_member))


def make_analytic_surrogate(cfg: AnalyticConfig, d: int) -> Surrogate:
    """The exact (d <= cfg.exact_max_d) or order-MCMC DAG-posterior surrogate for d variables."""
    exact = d <= cfg.exact_max_d
    if not exact and d > 30:
        raise ValueError(f"the analytic surrogate supports at most 30 variables, got {d}")
    tab = build_tables(d, cfg.max_indegree, with_dp=exact)

    def posterior(state: AnalyticState) -> AnalyticState:
        scores = local_scores(state.stats, state.var_mask, tab, cfg.penalty)
        if exact:
            log_post, order, key = exact_parent_posterior(scores, tab), state.order, state.key
        else:
            key, sub = jax.random.split(state.key)
            log_post, order = order_mcmc_parent_posterior(sub, scores, tab, state.order,
                                                          cfg.mcmc_steps, cfg.mcmc_thin)
        probs = edge_probs_from_parent_posterior(log_post, tab)
        return state._replace(edge_probs=probs, log_post=log_post, order=order, key=key)

    def init(key: Array, var_mask: Array) -> AnalyticState:
        P = len(tab.ps_local)
        return AnalyticState(empty_stats(d), var_mask.astype(bool), jnp.zeros((d, d), jnp.float32),
                             jnp.full((d, P), -jnp.inf, jnp.float32), jnp.arange(d), key)

    def update(state: AnalyticState, values: Array, intervened: Array, valid: Array) -> AnalyticState:
        stats = add_rows(state.stats, values, intervened, valid)
        return posterior(state._replace(stats=stats))

    return Surrogate(init=init, update=update, edge_probs=lambda s: s.edge_probs)
