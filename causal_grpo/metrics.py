"""Structure-learning metrics; ``adj[i, j] = 1`` means i -> j throughout.

Conventions (spelled out because papers differ):

* **SHD** counts, over unordered pairs {i, j}, the pairs whose edge state differs between the
  true and the predicted graph, where a pair's state is one of: no edge, i -> j, j -> i, both.
  An addition, a deletion and a reversal each cost 1; predicting both directions where one is
  true also costs 1. This is the causal-learn / gcastle / avici convention (``cdt``'s
  ``double_for_anticausal=False``).
* **Precision / recall / F1** are over directed edges (a reversed edge is one false positive
  and one false negative). With no predicted edges precision is 1 (no false claims); with no
  true edges recall is 1; F1 is 0 when precision + recall is 0. Hence an empty prediction of
  an empty graph scores F1 = 1, and an empty prediction of a non-empty graph F1 = 0.
* **Target-parent metrics** (the seed document's notion) compare the predicted parent set of
  the target with its true parents: precision / recall / F1 as above, and parent SHD = number
  of wrong parents plus missed parents (the size of the symmetric difference).
* Variables with ``var_mask = False`` (padding) are ignored everywhere.

* **AUPRC** is the average precision of the edge probabilities over directed off-diagonal
  pairs (step-wise, scikit-learn's definition: tied scores form one threshold); undefined
  (NaN) when the true graph has no edges.

Everything except AUROC and the host :func:`auprc` is jittable and works on one example
(:func:`average_precision` is the jittable AUPRC); ``vmap`` at call sites.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _mask2(var_mask: Array | None, d: int) -> Array:
    m = jnp.ones((d,), bool) if var_mask is None else jnp.asarray(var_mask, bool)
    return m[:, None] & m[None, :] & ~jnp.eye(d, dtype=bool)


def _prf(tp: Array, fp: Array, fn: Array) -> tuple[Array, Array, Array]:
    precision = jnp.where(tp + fp > 0, tp / jnp.maximum(tp + fp, 1), 1.0)
    recall = jnp.where(tp + fn > 0, tp / jnp.maximum(tp + fn, 1), 1.0)
    f1 = jnp.where(precision + recall > 0,
                   2 * precision * recall / jnp.maximum(precision + recall, 1e-12), 0.0)
    return precision, recall, f1


def shd(true_adj: Array, pred_adj: Array, var_mask: Array | None = None) -> Array:
    """Structural Hamming distance (pair convention, reversal = 1); see module docstring."""
    d = true_adj.shape[-1]
    m = _mask2(var_mask, d)
    t = (jnp.asarray(true_adj) != 0) & m
    p = (jnp.asarray(pred_adj) != 0) & m
    diff = (t != p)
    pair_diff = (diff | diff.T) & jnp.triu(jnp.ones((d, d), bool), 1)
    return jnp.sum(pair_diff).astype(jnp.int32)


def structure_metrics(true_adj: Array, pred_adj: Array,
                      var_mask: Array | None = None) -> Dict[str, Array]:
    """Whole-graph ``shd``, ``precision``, ``recall``, ``f1`` and ``tp``/``fp``/``fn`` counts.

    Args:
      true_adj: (d, d) true adjacency.
      pred_adj: (d, d) predicted adjacency (nonzero = edge).
      var_mask: optional (d,) bool; False entries (padding) are ignored.
    """
    d = true_adj.shape[-1]
    m = _mask2(var_mask, d)
    t = (jnp.asarray(true_adj) != 0) & m
    p = (jnp.asarray(pred_adj) != 0) & m
    tp = jnp.sum(t & p)
    fp = jnp.sum(~t & p)
    fn = jnp.sum(t & ~p)
    precision, recall, f1 = _prf(tp, fp, fn)
    return {"shd": shd(true_adj, pred_adj, var_mask), "precision": precision, "recall": recall,
            "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def parent_metrics(true_adj: Array, pred_adj: Array, target: Array,
                   var_mask: Array | None = None) -> Dict[str, Array]:
    """Predicted vs true parents of ``target``: ``parent_precision/recall/f1`` and ``parent_shd``."""
    d = true_adj.shape[-1]
    m = jnp.ones((d,), bool) if var_mask is None else jnp.asarray(var_mask, bool)
    m = m & (jnp.arange(d) != target)
    t = (jnp.asarray(true_adj)[:, target] != 0) & m
    p = (jnp.asarray(pred_adj)[:, target] != 0) & m
    tp, fp, fn = jnp.sum(t & p), jnp.sum(~t & p), jnp.sum(t & ~p)
    precision, recall, f1 = _prf(tp, fp, fn)
    return {"parent_precision": precision, "parent_recall": recall, "parent_f1": f1,
            "parent_shd": (fp + fn).astype(jnp.int32)}


def pair_probs(probs: Array) -> tuple[Array, Array, Array]:
    """Per ordered pair: (P(i -> j), P(j -> i), P(no edge)), each (d, d).

    Exact for a DAG posterior, where the two directions exclude each other; a matrix with
    ``p_ij + p_ji > 1`` (a non-DAG model) is renormalised over the three states.
    """
    p, q = probs, probs.T
    total = p + q
    scale = jnp.where(total > 1.0, 1.0 / jnp.maximum(total, 1e-12), 1.0)
    p, q = p * scale, q * scale
    return p, q, jnp.clip(1.0 - p - q, 0.0, 1.0)


def posterior_graph(probs: Array, var_mask: Array | None = None) -> Array:
    """(d, d) {0,1} graph: per pair, the most probable of {none, i -> j, j -> i}.

    This is the Bayes estimator of the SHD above (SHD is a sum of 0/1 losses over pairs). Two
    equally probable directions above "none" give i -> j for i < j (either is optimal; none
    is not); a tie with "none" gives no edge.
    """
    d = probs.shape[-1]
    p, q, none = pair_probs(probs)
    first = jnp.arange(d)[:, None] < jnp.arange(d)[None, :]
    choose = ((p > q) | ((p == q) & first)) & (p > none)
    return (choose & _mask2(var_mask, d)).astype(jnp.float32)


def expected_shd(true_adj: Array, probs: Array, var_mask: Array | None = None) -> Array:
    """Expected SHD of a graph drawn from the pairwise edge distribution ``probs`` (d, d)."""
    d = probs.shape[-1]
    m = _mask2(var_mask, d) & jnp.triu(jnp.ones((d, d), bool), 1)
    t = jnp.asarray(true_adj) != 0
    p, q, none = pair_probs(probs)
    correct = jnp.where(t, p, jnp.where(t.T, q, none))
    return jnp.sum(jnp.where(m, 1.0 - correct, 0.0))


def pair_entropy(probs: Array) -> Array:
    """(d, d) symmetric entropy (nats) of each pair's three-state edge distribution."""
    p, q, none = pair_probs(probs)

    def h(x):
        return -jnp.where(x > 0, x * jnp.log(jnp.maximum(x, 1e-30)), 0.0)

    ent = h(p) + h(q) + h(none)
    return ent * (1.0 - jnp.eye(probs.shape[-1]))


# --------------------------------------------------------------------------- ranking metrics (host)

def _edge_scores(true_adj, probs, var_mask):
    true_adj, probs = np.asarray(true_adj), np.asarray(probs, float)
    d = true_adj.shape[-1]
    m = np.asarray(_mask2(var_mask, d))
    return (true_adj[m] != 0).astype(int), probs[m]


def auroc(true_adj, probs, var_mask=None) -> float:
    """Area under the ROC curve of edge probabilities over directed off-diagonal pairs.

    Ties count one half (Mann–Whitney). NaN when all pairs are edges or none are.
    """
    y, s = _edge_scores(true_adj, probs, var_mask)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auprc(true_adj, probs, var_mask=None) -> float:
    """Average precision of edge probabilities (step-wise, as scikit-learn); NaN with no edges."""
    y, s = _edge_scores(true_adj, probs, var_mask)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # Group tied scores: precision/recall are evaluated at each distinct threshold.
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def average_precision(true_adj: Array, probs: Array, var_mask: Array | None = None) -> Array:
    """Jittable :func:`auprc`: () float32 average precision of ``probs`` (d, d); NaN with no
    true edges.

    Sum over the true edges of the precision at their score's threshold, over the number of
    true edges (the step-wise average precision, ties grouped); O(d^2 log d).
    """
    d = probs.shape[-1]
    m = _mask2(var_mask, d).reshape(-1)
    y = (jnp.asarray(true_adj) != 0).reshape(-1) & m
    # Masked pairs sort last (score -inf) and are never counted as predictions.
    s = jnp.where(m, jnp.asarray(probs, jnp.float32).reshape(-1), -jnp.inf)
    order = jnp.argsort(-s)
    neg, ys = -s[order], y[order]
    tp = jnp.cumsum(ys)
    predicted = jnp.cumsum(m[order])
    last = jnp.searchsorted(neg, neg, side="right") - 1     # end of each score's tie group
    precision = tp[last] / jnp.maximum(predicted[last], 1)
    n_pos = ys.sum()
    ap = jnp.sum(jnp.where(ys, precision, 0.0)) / jnp.maximum(n_pos, 1)
    return jnp.where(n_pos > 0, ap, jnp.nan).astype(jnp.float32)
