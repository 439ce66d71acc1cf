"""Exact Bayesian posterior over DAGs for linear-Gaussian data with interventions.

Model (Koivisto & Sood 2004; Koivisto 2006; Friedman & Koller 2003):

* Local score of parent set S for node i, computed only on the rows where X_i was *not*
  intervened on (rows in which a parent was intervened are kept: that is what makes
  interventional data orient edges), |S| <= max_indegree, plus the size-uniform prior
  ``log q(|S|) = -log C(d-1, |S|)``; either
  BIC of the Gaussian linear regression of X_i on X_S (with intercept),
  ``-n_i/2 log(RSS_i(S)/n_i) - |S|/2 log(n_i)``, or
  BGe, the marginal likelihood of linear-Gaussian data under a normal-Wishart prior (Geiger &
  Heckerman 2002; the local form of Kuipers, Moffa & Heckerman 2014) with alpha_mu = 1,
  alpha_w = d + 2, T = t I, prior mean = the sample mean, on data standardised by node i's rows.
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
* Above ``exact_max_d`` variables the sum over orders is replaced by order MCMC over
  candidate parent sets (``causal_grpo.posterior_mcmc``), which shares the statistics and the
  scores of this module.

Sufficient statistics (per node: count, mean and centred cross-products of all variables over
its non-intervened rows) are merged incrementally (Chan et al.), so adding one sample is O(d^3).
Padding variables (``var_mask = False``) get only the empty parent set and are nobody's parent,
which leaves the posterior of the real variables exactly unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from causal_grpo.errors import UserError
from causal_grpo.scm import EXACT, unit_scale
from causal_grpo.surrogate import Surrogate

Array = jax.Array


class Score(enum.Enum):
    BIC = "bic"
    BGE = "bge"


@dataclasses.dataclass(frozen=True)
class AnalyticConfig:
    """Settings of the DAG-posterior surrogate (all static: they set shapes or programs).

    Attributes:
      max_indegree: largest parent set scored (k); the exact DP takes any k <= d - 1.
      exact_max_d: largest padded d handled by the exact DP; above it, order MCMC over
        candidate parent sets.
      penalty: multiplier of the BIC complexity term (1.0 = BIC; unused by BGe).
      score: local score, BIC or BGe.
      candidates: K, the candidate parents per node of the order MCMC (parent sets are the
        subsets of size <= min(k, K) of them).
      chains: order-MCMC chains, carried from one update to the next.
      mcmc_steps: proposals per chain and update; the second half is averaged.
      burn_in: proposals per chain of the first update with data (the chains start at random
        orders).
    """

    # k = 4 over 3 in `python -m jobs.benchmark scale` (er10 F1 0.952 vs 0.893, er30 0.844 vs
    # 0.813, er50 0.768 vs 0.742, sf30 0.855 vs 0.848; 10 seeds, 30 + 50 samples). 1000 steps
    # over 200 on validation seeds: lower MCMC error against the exact DP at d = 12/14, higher
    # final F1 on 5 of 6 graphs at d = 20-100, at ~1.4 s instead of ~0.9 s per run at d = 100
    # (docs/BENCHMARKS.md).
    max_indegree: int = 4
    exact_max_d: int = 16
    penalty: float = 1.0
    score: Score = Score.BIC
    candidates: int = 10
    chains: int = 4
    mcmc_steps: int = 1000
    burn_in: int = 2000

    def __post_init__(self) -> None:
        import numbers

        from causal_grpo.errors import UserError
        from causal_grpo.options import is_integer, member, shown
        for name in ("max_indegree", "exact_max_d", "candidates", "chains", "mcmc_steps",
                     "burn_in"):
            v, low = getattr(self, name), 0 if name == "exact_max_d" else 1   # 0: always MCMC
            if not is_integer(v) or v < low:
                raise UserError(f"AnalyticConfig.{name} must be an integer >= {low}, "
                                f"got {shown(v)}")
        v = self.penalty
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < math.inf:
            raise UserError(f"AnalyticConfig.penalty must be a finite number >= 0, got {shown(v)}")
        member(self, "score", Score)

    def exact(self, d: int) -> bool:
        return d <= self.exact_max_d

    def describe(self, d: int) -> str:
        """The posterior used for ``d`` (padded) variables, in words, e.g. for table headers."""
        k = min(self.max_indegree, d - 1)
        if self.exact(d):
            return f"exact DP over orders, {self.score.value.upper()}, in-degree <= {k}"
        return (f"order MCMC over candidate parent sets, {self.score.value.upper()}, in-degree "
                f"<= {min(k, self.candidates)}, K = {min(self.candidates, d - 1)} candidates, "
                f"{self.chains} chains x {self.mcmc_steps} steps per update "
                f"({self.burn_in} at the first)")


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
    pos: np.ndarray           # (2^d,) int: position of each global subset in size-major order
    fwd: tuple                # per size k=1..d: (pred (C,k) rows of size k-1, flat_alpha (C,k))
    bwd: tuple                # per size t=d-1..0: (nxt (C,d-t) rows of size t+1, flat_alpha)


@functools.lru_cache(maxsize=None)
def build_tables(d: int, k: int) -> Tables:
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
    n_loc = 1 << (d - 1)
    glob = np.zeros((d, n_loc), np.int32)
    for i in range(d):
        low = np.arange(n_loc, dtype=np.int32)
        # Insert a zero bit at position i: bits below i stay, bits at/above i shift up by one.
        glob[i] = (low & ((1 << i) - 1)) | ((low >> i) << (i + 1))

    # The DP over orders runs size by size ("layers"); each layer is a dense array of its
    # subsets in increasing bitmask order, so a layer reads only the previous one by row.
    masks = np.arange(1 << d, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(d)) & 1).astype(bool)           # (2^d, d)
    size = bits.sum(1)
    layers = [masks[size == t] for t in range(d + 1)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in layers])])
    row = np.zeros(1 << d, np.int64)
    for t, lay in enumerate(layers):
        row[lay] = np.arange(len(lay))
    pos = (row + offsets[size]).astype(np.int32)

    def loc(v: np.ndarray, g: np.ndarray) -> np.ndarray:
        # Local index of global mask g for node v: remove bit v.
        return (g & ((1 << v) - 1)) | ((g >> (v + 1)) << v)

    fwd, bwd = [], []
    for t in range(1, d + 1):
        g = layers[t][:, None]
        v = np.nonzero(bits[layers[t]])[1].reshape(len(layers[t]), t)    # members, ascending
        rest = g & ~(1 << v)
        fwd.append((row[rest].astype(np.int32), (v * n_loc + loc(v, rest)).astype(np.int32)))
    for t in range(d - 1, -1, -1):
        g = layers[t][:, None]
        v = np.nonzero(~bits[layers[t]])[1].reshape(len(layers[t]), d - t)  # non-members
        bwd.append((row[g | (1 << v)].astype(np.int32),
                    (v * n_loc + loc(v, g)).astype(np.int32)))
    return Tables(d, k, ps_local, ps_size, ps_global, ps_member, ps_gmask, glob, pos,
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
    mean_b = jnp.matmul(w, values, precision=EXACT) / safe[:, None]        # (d, d)
    cen = values[None, :, :] - mean_b[:, None, :]                          # (d, r, d)
    m2_b = jnp.einsum("ir,ira,irb->iab", w, cen, cen, precision=EXACT)
    n = stats.n + nb
    frac = jnp.where(n > 0, nb / jnp.maximum(n, 1.0), 0.0)
    delta = mean_b - stats.mean
    mean = stats.mean + delta * frac[:, None]
    outer = jnp.einsum("ia,ib->iab", delta, delta, precision=EXACT)
    m2 = stats.m2 + m2_b + outer * (stats.n * frac)[:, None, None]
    return Stats(n, mean, m2)


def _chol_schur(a: Array, b: Array, c: Array, k: int) -> tuple[Array, Array]:
    """Schur complement c - b^T a^{-1} b and log det a for a batch of k x k SPD systems.

    a: (..., k, k); b: (..., k); c: (...). The Cholesky is unrolled on purpose: XLA:CPU turns a
    batch of tiny LAPACK solves into a loop of library calls, while these are a few fused
    elementwise ops.
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
    logdet = 2.0 * sum(jnp.log(L[j][j]) for j in range(k))
    return c - z2, logdet


def set_scores(stats: Stats, var_mask: Array, idx: Array, size: Array, penalty: float,
               score: Score, nodes: Array | None = None) -> Array:
    """(d, P) local scores (log prior included) of the parent sets ``idx``; -inf if disallowed.

    idx: (d, P, k) global parent indices of set p of node i, k >= 1, padded with d (a filler
    that adds nothing to the fit or to log det); size: (P,) or (d, P) number of real parents.
    With ``nodes`` (A,), only those nodes are scored: idx (A, P, k), result (A, P).
    Disallowed: a set with a padding variable, and any non-empty set of a padding node.
    """
    d, k = stats.n.shape[0], idx.shape[-1]
    own = jnp.arange(d) if nodes is None else nodes
    if nodes is not None:
        stats = Stats(stats.n[nodes], stats.mean[nodes], stats.m2[nodes])
    rows = jnp.arange(own.shape[0])
    n = jnp.maximum(stats.n, 1.0)
    cov = stats.m2 / n[:, None, None]                                 # (d, d, d) MLE per node
    # The floors below are sized for data of order one: variables in small units are brought
    # to it first (exact powers of two). BIC moves by a constant per node, BGe not at all.
    sc = unit_scale(jnp.diagonal(cov, axis1=1, axis2=2))              # (d, d)
    cov = cov / (sc[:, :, None] * sc[:, None, :])
    if score is Score.BGE:
        # Standardise by node i's rows; the prior mean is the sample mean, so R = t I + S_N.
        sd = jnp.sqrt(jnp.maximum(jnp.diagonal(cov, axis1=1, axis2=2), 1e-12))  # (d, d)
        t = 0.5                                                       # am (aw - d - 1)/(am + 1)
        mat = stats.n[:, None, None] * cov / (sd[:, :, None] * sd[:, None, :]) + t * jnp.eye(d)
    else:
        mat = cov
    matp = jnp.pad(mat, ((0, 0), (0, 1), (0, 1))).at[:, d, d].set(1.0)
    node = rows[:, None, None]
    a = matp[node[..., None], idx[..., :, None], idx[..., None, :]]   # (d, P, k, k)
    # Filler rows/columns of the identity, else two fillers would make a singular block.
    a = jnp.where((idx[..., :, None] == d) | (idx[..., None, :] == d), jnp.eye(k), a)
    diag = jnp.diagonal(a, axis1=-2, axis2=-1)
    a = a + jnp.eye(k) * (1e-6 * diag[..., :, None] + 1e-9)
    b = matp[node, idx, own[:, None, None]]                           # (d, P, k)
    c = mat[rows, own, own][:, None]                                  # (d, 1)
    res, logdet = _chol_schur(a, b, c, k)
    res = jnp.maximum(res, 1e-6 * c + 1e-12)
    size = jnp.broadcast_to(jnp.asarray(size, jnp.float32), idx.shape[:2])
    nn = stats.n[:, None]
    if score is Score.BGE:
        # Kuipers et al. (2014) eq. (A.3) with alpha_mu = 1, alpha_w = d + 2 (so aw - d = 2):
        # the local score is the ratio of the Y = S + {i} and S terms of the normal-Wishart
        # marginal likelihood; det R_Y = det R_S * Schur complement.
        val = (0.5 * jnp.log(1.0 / (nn + 1.0)) + gammaln(0.5 * (nn + size + 3.0))
               - gammaln(0.5 * (size + 3.0)) - 0.5 * nn * jnp.log(jnp.pi)
               + 0.5 * (2.0 * size + 3.0) * jnp.log(0.5) - 0.5 * logdet
               - 0.5 * (nn + size + 3.0) * jnp.log(res))
    else:
        val = -0.5 * n[:, None] * jnp.log(res) - penalty * 0.5 * size * jnp.log(n)[:, None]
    # Size-uniform prior 1 / C(d_real - 1, |S|), with d_real the number of *real* variables so
    # that padding leaves the posterior unchanged.
    m = jnp.maximum(var_mask.sum().astype(jnp.float32) - 1.0, size)
    val = val - (gammaln(m + 1.0) - gammaln(size + 1.0) - gammaln(m - size + 1.0))
    real = jnp.concatenate([var_mask, jnp.ones((1,), bool)])
    uses_pad = jnp.any(~real[idx], axis=-1)
    allowed = ~uses_pad & (var_mask[own][:, None] | (size == 0))
    return jnp.where(allowed, val, -jnp.inf)


def local_scores(stats: Stats, var_mask: Array, tab: Tables, penalty: float = 1.0,
                 score: Score = Score.BIC) -> Array:
    """(d, P) local scores of every parent set of ``tab``; -inf for disallowed sets."""
    return set_scores(stats, var_mask, jnp.asarray(tab.ps_global), tab.ps_size, penalty, score)


# --------------------------------------------------------------------------- exact DP
#
# The DP works on arrays whose *last* axis is a batch of independent posteriors. Under vmap,
# JAX would put the batch first, and every transform pass and every DP gather would then walk
# strided scalars; with the batch last each of them moves contiguous rows of the batch, which
# is 2-4x faster on XLA:CPU (``python -m jobs.benchmark posterior``). ``exact_parent_posterior``
# keeps its unbatched signature: a custom batching rule moves each vmapped axis to the end and
# merges it into that batch axis, so nested vmaps (seeds x group members x ...) become one
# batch-last call.

def _subset_sum(x: Array, nbits: int) -> Array:
    """Log-space zeta transform over axis 1 (length 2^nbits): f(U) = ⊕_{S⊆U} x(S)."""
    lead, tail = x.shape[:1], x.shape[2:]
    for b in range(nbits):
        y = x.reshape(lead + (1 << (nbits - 1 - b), 2, 1 << b) + tail)
        lo, hi = y[:, :, 0], y[:, :, 1]
        x = jnp.stack([lo, jnp.logaddexp(lo, hi)], axis=2).reshape(lead + (1 << nbits,) + tail)
    return x


def _superset_sum(x: Array, nbits: int) -> Array:
    """Log-space superset-sum transform over axis 1: f(S) = ⊕_{U⊇S} x(U)."""
    lead, tail = x.shape[:1], x.shape[2:]
    for b in range(nbits):
        y = x.reshape(lead + (1 << (nbits - 1 - b), 2, 1 << b) + tail)
        lo, hi = y[:, :, 0], y[:, :, 1]
        x = jnp.stack([jnp.logaddexp(lo, hi), hi], axis=2).reshape(lead + (1 << nbits,) + tail)
    return x


def _lse(x: Array, axis: int = -1) -> Array:
    m = jnp.max(x, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return jnp.squeeze(m, axis) + jnp.log(jnp.sum(jnp.exp(x - m), axis=axis))


def _exact_posterior_batch_last(scores: Array, tab: Tables) -> Array:
    """(d, P, B) scores -> (d, P, B) log parent-set posteriors, B independent problems."""
    d = tab.d
    n_loc = 1 << (d - 1)
    nb = scores.shape[-1]
    # Each DAG holds one parent set per node, so shifting a node's scores by a constant leaves
    # the posterior as it is; shifted by their largest, the DP's sums stay near 0, where float32
    # resolves them (unshifted, scores of magnitude ~rows pushed edge marginals past 1).
    top = jnp.max(scores, axis=1, keepdims=True)
    scores = scores - jnp.where(jnp.isfinite(top), top, 0.0)
    beta = jnp.full((d, n_loc, nb), -jnp.inf, scores.dtype)
    beta = beta.at[:, tab.ps_local, :].set(scores)
    a_flat = _subset_sum(beta, d - 1).reshape(d * n_loc, nb)          # log alpha_i(U)

    layer = jnp.zeros((1, nb), scores.dtype)                          # L(empty) = 1
    Ls = [layer]
    for pred, flat in tab.fwd:
        layer = _lse(layer[pred] + a_flat[flat], axis=1)
        Ls.append(layer)
    layer = jnp.zeros((1, nb), scores.dtype)                          # R(everything) = 1
    Rs = [layer]
    for nxt, flat in tab.bwd:
        layer = _lse(layer[nxt] + a_flat[flat], axis=1)
        Rs.append(layer)
    L = jnp.concatenate(Ls, axis=0)                                   # size-major order
    R = jnp.concatenate(Rs[::-1], axis=0)

    glob = tab.glob                                                   # (d, 2^(d-1))
    with_i = glob | (1 << np.arange(d))[:, None]
    gamma = L[tab.pos[glob]] + R[tab.pos[with_i]]
    gamma_hat = _superset_sum(gamma, d - 1)
    log_post = scores + gamma_hat[:, tab.ps_local, :]
    # Each node's parent-set posterior sums to one exactly in theory; normalising per node
    # (rather than dividing by the DP's log Z) keeps float32 round-off from pushing an edge
    # marginal above 1.
    top = jnp.max(log_post, axis=1, keepdims=True)
    shifted = log_post - jnp.where(jnp.isfinite(top), top, 0.0)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))


@functools.lru_cache(maxsize=None)
def _batched_posterior(d: int, k: int):
    tab = build_tables(d, k)

    @jax.custom_batching.custom_vmap
    def post(scores):                                                 # (d, P, B)
        return _exact_posterior_batch_last(scores, tab)

    @post.def_vmap
    def _rule(axis_size, in_batched, scores):                         # (A, d, P, B)
        d, P, nb = scores.shape[1:]
        merged = jnp.moveaxis(scores, 0, -1).reshape(d, P, nb * axis_size)
        out = post(merged).reshape(d, P, nb, axis_size)
        return jnp.moveaxis(out, -1, 0), True

    return post


def exact_parent_posterior(scores: Array, tab: Tables) -> Array:
    """(d, P) log posterior of each node's parent sets, summed exactly over all DAGs.

    Vmap it freely: the batch axes of any nesting become one batch-last DP call.
    """
    return _batched_posterior(tab.d, tab.k)(scores[..., None])[..., 0]


# --------------------------------------------------------------------------- surrogate

class AnalyticState(NamedTuple):
    stats: Stats
    var_mask: Array
    edge_probs: Array      # (d, d) cached P(i -> j)
    log_post: Array        # (d, P) log parent-set posterior


def edge_probs_from_parent_posterior(log_post: Array, tab: Tables) -> Array:
    """(d, d) edge marginals, ``probs[j, i] = P(j -> i)`` from per-node set posteriors."""
    return jnp.einsum("ip,ipj->ji", jnp.exp(log_post), jnp.asarray(tab.ps_member), precision=EXACT)


def _n_sets(n: int, k: int) -> int:
    return sum(math.comb(n, s) for s in range(min(k, n) + 1))


def posterior_bytes(cfg: AnalyticConfig, d: int, batch: int = 1) -> int:
    """Rough peak memory (bytes) of ``batch`` vmapped posterior updates at ``d`` variables.

    Counts the arrays an update materialises (float32): the per-node statistics and their
    merge, the gathered k x k systems of every scored parent set, and the exact DP's
    (d, 2^(d-1)) tables or the MCMC's (d, 2^K) tables; twice that for XLA temporaries.
    """
    k = max(1, min(cfg.max_indegree, d - 1))
    floats = 3 * d ** 3 + 64 * d ** 2
    if cfg.exact(d):
        P = _n_sets(d - 1, k)
        floats += d * P * (k * k + 2 * k + 4) + 6 * d * 2 ** (d - 1) + 2 ** (d + 2)
        const = 4 * d * P * d                                         # ps_member, shared
    else:
        K = min(cfg.candidates, d - 1)
        P = _n_sets(K, k)
        floats += d * P * (k * k + 2 * k + 4) + 3 * d * 2 ** K + cfg.chains * d * K * 4
        const = 0
    return 2 * 4 * floats * batch + const


def available_bytes() -> int:
    """Memory available to this process now (MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg: AnalyticConfig, d: int, batch: int = 1) -> None:
    """Raise :class:`UserError` (one line) when the posterior of d variables cannot fit."""
    need, have = posterior_bytes(cfg, d, batch), available_bytes()
    if need > have:
        raise UserError(f"the structure posterior for d = {d} variables ({cfg.describe(d)}) "
                        f"needs about {need / 2**30:.1f} GiB for {batch} seed(s) at once, more "
                        f"than the {have / 2**30:.1f} GiB of memory available")


def make_analytic_surrogate(cfg: AnalyticConfig, d: int) -> Surrogate:
    """The exact (d <= cfg.exact_max_d) or candidate-set order-MCMC DAG posterior for d
    variables; refuses (UserError) a size whose posterior cannot fit in memory."""
    check_fits(cfg, d)
    if not cfg.exact(d):
        from causal_grpo import posterior_mcmc as mc
        def fresh(key: Array, var_mask: Array) -> "mc.WhatIfState":
            return mc.what_if_state(cfg, mc.init_state(cfg, d, key, var_mask),
                                    jnp.zeros((d, d), jnp.float32))

        what_if = Surrogate(init=fresh, update=functools.partial(mc.what_if_update, cfg),
                            edge_probs=lambda s: s.edge_probs)
        return Surrogate(init=functools.partial(mc.init_state, cfg, d),
                         update=functools.partial(mc.update_state, cfg),
                         edge_probs=lambda s: s.edge_probs, chain_gap=lambda s: s.chain_gap,
                         what_if=lambda s, p: (what_if, mc.what_if_state(cfg, s, p)))
    tab = build_tables(d, cfg.max_indegree)

    def init(key: Array, var_mask: Array) -> AnalyticState:
        P = len(tab.ps_local)
        return AnalyticState(empty_stats(d), var_mask.astype(bool), jnp.zeros((d, d), jnp.float32),
                             jnp.full((d, P), -jnp.inf, jnp.float32))

    def update(state: AnalyticState, values: Array, intervened: Array, valid: Array) -> AnalyticState:
        stats = add_rows(state.stats, values, intervened, valid)
        scores = local_scores(stats, state.var_mask, tab, cfg.penalty, cfg.score)
        log_post = exact_parent_posterior(scores, tab)
        probs = edge_probs_from_parent_posterior(log_post, tab)
        return AnalyticState(stats, state.var_mask, probs, log_post)

    return Surrogate(init=init, update=update, edge_probs=lambda s: s.edge_probs)
