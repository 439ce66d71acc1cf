"""Unit tests for causal_grpo.metrics (adj[i, j] = 1 means i -> j)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from causal_grpo.metrics import (
    auprc,
    average_precision,
    auroc,
    expected_shd,
    pair_entropy,
    pair_probs,
    parent_metrics,
    posterior_graph,
    shd,
    structure_metrics,
)


def adj_from_edges(d, edges):
    a = np.zeros((d, d), np.float32)
    for i, j in edges:
        a[i, j] = 1.0
    return a


def as_py(metrics):
    return {k: float(v) for k, v in metrics.items()}


def ref_shd(t, p):
    """Pair-state SHD reference: number of unordered pairs whose state {none, ->, <-, both} differs."""
    t, p = np.asarray(t) != 0, np.asarray(p) != 0
    d = t.shape[0]
    return sum(
        (t[i, j], t[j, i]) != (p[i, j], p[j, i]) for i in range(d) for j in range(i + 1, d)
    )


# --------------------------------------------------------------------------- structure_metrics / shd

def test_empty_true_empty_pred():
    z = np.zeros((4, 4), np.float32)
    m = as_py(structure_metrics(z, z))
    assert m["shd"] == 0
    assert m["tp"] == m["fp"] == m["fn"] == 0
    # Documented convention: no predicted edges -> precision 1; no true edges -> recall 1.
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0


def test_empty_pred_nonempty_truth():
    t = adj_from_edges(4, [(0, 1), (1, 2), (0, 3)])
    z = np.zeros((4, 4), np.float32)
    m = as_py(structure_metrics(t, z))
    assert m["shd"] == 3  # one deletion per true edge
    assert m["tp"] == 0 and m["fp"] == 0 and m["fn"] == 3
    assert m["precision"] == 1.0  # no false claims
    assert m["recall"] == 0.0
    assert m["f1"] == 0.0


def test_nonempty_pred_empty_truth():
    z = np.zeros((4, 4), np.float32)
    p = adj_from_edges(4, [(0, 1), (2, 3)])
    m = as_py(structure_metrics(z, p))
    assert m["shd"] == 2
    assert m["tp"] == 0 and m["fp"] == 2 and m["fn"] == 0
    assert m["precision"] == 0.0
    assert m["recall"] == 1.0  # no true edges
    assert m["f1"] == 0.0


def test_reversed_edge():
    t = adj_from_edges(3, [(0, 1)])
    p = adj_from_edges(3, [(1, 0)])
    m = as_py(structure_metrics(t, p))
    assert m["shd"] == 1  # a reversal costs 1, not 2
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_both_directions_predicted_one_true():
    t = adj_from_edges(3, [(0, 1)])
    p = adj_from_edges(3, [(0, 1), (1, 0)])
    m = as_py(structure_metrics(t, p))
    assert m["shd"] == 1  # pair convention: the pair state differs once
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_worked_four_variable_example():
    # True:  0->1, 1->2, 2->3, 0->3
    # Pred:  0->1 (correct), 2->1 (reversal of 1->2), 1->3 (addition), 0->2 (addition),
    #        0->3 (correct); 2->3 missing (deletion).
    # Pairs: {0,1} same; {0,2} none vs 0->2 (+1); {0,3} same; {1,2} 1->2 vs 2->1 (+1);
    #        {1,3} none vs 1->3 (+1); {2,3} 2->3 vs none (+1)            => SHD = 4
    # Directed edges: pred = {01, 21, 13, 02, 03} (5); tp = {01, 03} = 2; fp = {21, 13, 02} = 3;
    #        fn = {12, 23} = 2. precision = 2/5 = 0.4, recall = 2/4 = 0.5,
    #        f1 = 2 * 0.4 * 0.5 / 0.9 = 0.4444...
    t = adj_from_edges(4, [(0, 1), (1, 2), (2, 3), (0, 3)])
    p = adj_from_edges(4, [(0, 1), (2, 1), (1, 3), (0, 2), (0, 3)])
    m = as_py(structure_metrics(t, p))
    assert m["shd"] == 4
    assert (m["tp"], m["fp"], m["fn"]) == (2, 3, 2)
    assert m["precision"] == pytest.approx(0.4)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4 / 0.9, rel=1e-6)
    assert int(shd(t, p)) == 4
    assert int(shd(p, t)) == 4


def test_nonbinary_entries_count_as_edges_and_diagonal_ignored():
    t = adj_from_edges(3, [(0, 1)])
    p = np.zeros((3, 3), np.float32)
    p[0, 1] = 0.3  # nonzero = edge
    p[2, 2] = 1.0  # self-loop on the diagonal is ignored
    m = as_py(structure_metrics(t, p))
    assert m["shd"] == 0 and m["f1"] == 1.0 and m["fp"] == 0


def test_var_mask_ignores_padding():
    t = adj_from_edges(4, [(0, 1), (2, 3)])
    p = adj_from_edges(4, [(0, 1), (3, 0), (1, 3)])
    mask = np.array([True, True, True, False])
    m = as_py(structure_metrics(t, p, mask))
    # Only the pairs among {0, 1, 2} count: truth 0->1, prediction 0->1.
    assert m["shd"] == 0
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["f1"] == 1.0
    sub = as_py(structure_metrics(t[:3, :3], p[:3, :3]))
    assert sub == m
    # Without the mask the edges touching variable 3 count.
    full = as_py(structure_metrics(t, p))
    assert full["shd"] == 3 and full["fp"] == 2 and full["fn"] == 1


def test_var_mask_jnp_and_padding_invariance():
    rng = np.random.default_rng(0)
    t = (rng.random((4, 4)) < 0.4).astype(np.float32)
    p = (rng.random((4, 4)) < 0.4).astype(np.float32)
    tp = np.pad(t, ((0, 2), (0, 2)), constant_values=1.0)  # garbage in the padding
    pp = np.pad(p, ((0, 2), (0, 2)), constant_values=0.0)
    mask = jnp.arange(6) < 4
    assert as_py(structure_metrics(tp, pp, mask)) == as_py(structure_metrics(t, p))


# --------------------------------------------------------------------------- parent metrics

def test_parent_metrics_hand_case():
    d, target = 5, 4
    t = adj_from_edges(d, [(1, 4), (2, 4), (0, 1), (0, 2)])
    # Predicted parents of 4 are {2, 3}; other columns/rows are noise that must not count.
    p = adj_from_edges(d, [(2, 4), (3, 4), (4, 0), (0, 3), (1, 2), (3, 1)])
    p[4, 4] = 1.0  # diagonal at the target is ignored
    m = as_py(parent_metrics(t, p, target))
    assert m["parent_precision"] == pytest.approx(0.5)
    assert m["parent_recall"] == pytest.approx(0.5)
    assert m["parent_f1"] == pytest.approx(0.5)
    assert m["parent_shd"] == 2


def test_parent_metrics_target_column_only_and_mask():
    d, target = 5, 4
    t = adj_from_edges(d, [(1, 4), (2, 4)])
    p = adj_from_edges(d, [(2, 4), (3, 4)])
    # Everything outside column `target` is irrelevant.
    p2 = p.copy()
    p2[:, :4] = 1.0 - np.eye(d)[:, :4]
    assert as_py(parent_metrics(t, p2, target)) == as_py(parent_metrics(t, p, target))
    # Masking variable 3 removes the false parent.
    mask = np.array([True, True, True, False, True])
    m = as_py(parent_metrics(t, p, target, mask))
    assert m["parent_precision"] == 1.0
    assert m["parent_recall"] == pytest.approx(0.5)
    assert m["parent_f1"] == pytest.approx(2 / 3)
    assert m["parent_shd"] == 1
    # Target passed as a jnp scalar (as in the SCM pytree) works too.
    m2 = as_py(parent_metrics(t, p, jnp.asarray(target, jnp.int32)))
    assert m2["parent_shd"] == 2


def test_parent_metrics_empty_conventions():
    d, target = 3, 2
    z = np.zeros((d, d), np.float32)
    m = as_py(parent_metrics(z, z, target))
    assert m["parent_f1"] == 1.0 and m["parent_shd"] == 0
    t = adj_from_edges(d, [(0, 2)])
    m = as_py(parent_metrics(t, z, target))
    assert m["parent_f1"] == 0.0 and m["parent_recall"] == 0.0 and m["parent_shd"] == 1


# --------------------------------------------------------------------------- probabilistic metrics

def test_expected_shd_of_exact_probs_is_zero():
    t = adj_from_edges(4, [(0, 1), (1, 2), (0, 3), (3, 2)])
    assert float(expected_shd(t, t)) == pytest.approx(0.0, abs=1e-7)


def test_expected_shd_hand_case():
    t = adj_from_edges(2, [(0, 1)])
    probs = np.array([[0.0, 0.7], [0.2, 0.0]], np.float32)
    # P(correct state 0->1) = 0.7, so the expected loss on the only pair is 0.3.
    assert float(expected_shd(t, probs)) == pytest.approx(0.3, abs=1e-6)
    # Truth reversed: correct with probability 0.2.
    assert float(expected_shd(t.T, probs)) == pytest.approx(0.8, abs=1e-6)
    # Truth empty: correct with P(none) = 0.1.
    assert float(expected_shd(np.zeros((2, 2)), probs)) == pytest.approx(0.9, abs=1e-6)


def test_expected_shd_var_mask():
    t = adj_from_edges(3, [(0, 1), (1, 2)])
    probs = np.array([[0, 0.7, 0], [0.2, 0, 0.5], [0.1, 0.1, 0]], np.float32)
    mask = np.array([True, True, False])
    assert float(expected_shd(t, probs, mask)) == pytest.approx(0.3, abs=1e-6)


def test_expected_shd_matches_monte_carlo():
    rng = np.random.default_rng(1)
    d = 5
    # Pairwise three-state distributions (p_ij, p_ji, none) and a random DAG truth.
    probs = np.zeros((d, d))
    for i, j in itertools.combinations(range(d), 2):
        a, b, _ = rng.dirichlet([1.0, 1.0, 1.0])
        probs[i, j], probs[j, i] = a, b
    perm = rng.permutation(d)
    t = np.zeros((d, d))
    for a, b in itertools.combinations(range(d), 2):
        if rng.random() < 0.5:
            t[perm[a], perm[b]] = 1.0
    n = 20000
    u = rng.random((n, d, d))
    samples = np.zeros((n, d, d), bool)
    for i, j in itertools.combinations(range(d), 2):
        x = u[:, i, j]
        samples[:, i, j] = x < probs[i, j]
        samples[:, j, i] = (x >= probs[i, j]) & (x < probs[i, j] + probs[j, i])
    tb = t != 0
    iu = np.triu_indices(d, 1)
    same = (samples[:, iu[0], iu[1]] == tb[iu]) & (samples[:, iu[1], iu[0]] == tb[iu[::-1]])
    mc = np.mean(np.sum(~same, axis=1))
    got = float(expected_shd(t.astype(np.float32), probs.astype(np.float32)))
    assert got == pytest.approx(mc, abs=0.05)
    # Also check one drawn sample against the library's SHD to make sure the MC reference
    # uses the same pair convention.
    for k in range(5):
        assert int(shd(t, samples[k].astype(np.float32))) == ref_shd(t, samples[k])


def test_pair_probs_renormalises_non_dag_matrix():
    probs = np.array([[0.0, 0.8], [0.6, 0.0]], np.float32)
    p, q, none = (np.asarray(x) for x in pair_probs(probs))
    assert p[0, 1] == pytest.approx(0.8 / 1.4, rel=1e-6)
    assert q[0, 1] == pytest.approx(0.6 / 1.4, rel=1e-6)
    assert none[0, 1] == pytest.approx(0.0, abs=1e-6)
    # Valid (p + q <= 1) pairs are untouched.
    probs = np.array([[0.0, 0.3], [0.5, 0.0]], np.float32)
    p, q, none = (np.asarray(x) for x in pair_probs(probs))
    assert (p[0, 1], q[0, 1], none[0, 1]) == pytest.approx((0.3, 0.5, 0.2), abs=1e-6)


def test_posterior_graph_picks_pair_argmax():
    probs = np.zeros((4, 4), np.float32)
    probs[0, 1], probs[1, 0] = 0.45, 0.35  # none = 0.20 -> 0 -> 1
    probs[0, 2], probs[2, 0] = 0.30, 0.30  # none = 0.40 -> no edge
    probs[3, 1], probs[1, 3] = 0.55, 0.10  # none = 0.35 -> 3 -> 1
    probs[2, 3], probs[3, 2] = 0.20, 0.45  # none = 0.35 -> 3 -> 2
    probs[1, 2], probs[2, 1] = 0.40, 0.00  # none = 0.60 -> no edge, though p_ij is the larger
    g = np.asarray(posterior_graph(probs))
    expected = adj_from_edges(4, [(0, 1), (3, 1), (3, 2)])
    np.testing.assert_array_equal(g, expected)
    # Directions tied above "none" (expected SHD 0.55 for either, 0.90 for no edge): an edge.
    tied = np.zeros((3, 3), np.float32)
    tied[2, 0] = tied[0, 2] = 0.45
    tied[1, 2] = tied[2, 1] = 0.25                   # none = 0.50 wins
    np.testing.assert_array_equal(np.asarray(posterior_graph(tied)), adj_from_edges(3, [(0, 2)]))
    assert g.dtype == np.float32
    # Masking variable 3 drops its edges.
    g = np.asarray(posterior_graph(probs, np.array([True, True, True, False])))
    np.testing.assert_array_equal(g, adj_from_edges(4, [(0, 1)]))


def test_posterior_graph_never_predicts_both_directions():
    rng = np.random.default_rng(3)
    probs = rng.random((6, 6)).astype(np.float32)  # not a DAG posterior; p + q may exceed 1
    g = np.asarray(posterior_graph(probs))
    assert not np.any((g != 0) & (g.T != 0))
    assert np.all(np.diag(g) == 0)


def test_pair_entropy_values():
    probs = np.zeros((3, 3), np.float32)
    probs[0, 1], probs[1, 0] = 0.2, 0.3  # none 0.5
    probs[0, 2], probs[2, 0] = 1 / 3, 1 / 3  # uniform: ln 3
    probs[1, 2], probs[2, 1] = 1.0, 0.0  # certain: 0
    h = np.asarray(pair_entropy(probs))
    expected01 = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))
    assert h[0, 1] == pytest.approx(expected01, rel=1e-5)
    assert h[0, 2] == pytest.approx(math.log(3), rel=1e-5)
    assert h[1, 2] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(h, h.T, atol=1e-7)
    np.testing.assert_array_equal(np.diag(h), 0.0)
    assert np.all(np.isfinite(h)) and np.all(h >= 0) and np.all(h <= math.log(3) + 1e-5)


# --------------------------------------------------------------------------- ranking metrics

def ref_auroc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else (0.5 if a == b else 0.0)
    return total / (len(pos) * len(neg))


def ref_ap_untied(y, s):
    order = np.argsort(-s)
    ys = y[order]
    hits, precs = 0, []
    for k, v in enumerate(ys, start=1):
        if v:
            hits += 1
            precs.append(hits / k)
    return float(np.mean(precs))


def offdiag(a):
    a = np.asarray(a)
    return a[~np.eye(a.shape[0], dtype=bool)]


def test_auroc_auprc_hand_case():
    t = adj_from_edges(3, [(0, 1), (1, 2)])
    s = np.array([[0, 0.9, 0.3], [0.6, 0, 0.5], [0.1, 0.2, 0]])
    # Positives 0.9, 0.5; negatives 0.3, 0.6, 0.1, 0.2. 0.9 beats 4, 0.5 beats 3 -> 7/8.
    assert auroc(t, s) == pytest.approx(7 / 8)
    # Ranking: 0.9 (+), 0.6, 0.5 (+), ... -> AP = (1/1 + 2/3) / 2.
    assert auprc(t, s) == pytest.approx((1 + 2 / 3) / 2)


def test_auroc_auprc_ties():
    t = adj_from_edges(3, [(0, 1), (1, 2)])
    s = np.array([[0, 0.9, 0.3], [0.5, 0, 0.5], [0.1, 0.2, 0]])
    # Positive 0.5 ties negative 0.5 -> counts one half: (4 + 3 + 0.5) / 8.
    assert auroc(t, s) == pytest.approx(7.5 / 8)
    # Thresholds at distinct scores: 0.9 -> P=1, R=.5; 0.5 -> P=2/3, R=1. AP = .5*1 + .5*2/3.
    assert auprc(t, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # All scores tied: AUROC 0.5, AP = base rate.
    flat = np.full((3, 3), 0.4)
    assert auroc(t, flat) == pytest.approx(0.5)
    assert auprc(t, flat) == pytest.approx(2 / 6)


def test_auroc_auprc_perfect_and_nan():
    t = adj_from_edges(4, [(0, 1), (2, 3)])
    assert auroc(t, t) == 1.0
    assert auprc(t, t) == 1.0
    z = np.zeros((4, 4))
    assert math.isnan(auroc(z, np.random.default_rng(0).random((4, 4))))
    assert math.isnan(auprc(z, np.random.default_rng(0).random((4, 4))))
    full = 1.0 - np.eye(3)
    assert math.isnan(auroc(full, np.random.default_rng(0).random((3, 3))))


@pytest.mark.parametrize("seed", range(8))
def test_auroc_auprc_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 7))
    t = (rng.random((d, d)) < 0.35).astype(float)
    np.fill_diagonal(t, 0)
    y = offdiag(t).astype(int)
    if y.sum() == 0 or y.sum() == len(y):
        t[0, 1] = 1 - t[0, 1]
        y = offdiag(t).astype(int)
    s = rng.random((d, d))  # continuous: no ties
    assert auroc(t, s) == pytest.approx(ref_auroc(y, offdiag(s)), abs=1e-12)
    assert auprc(t, s) == pytest.approx(ref_ap_untied(y, offdiag(s)), abs=1e-12)
    # Rounded scores (ties) still match the Mann-Whitney count.
    sr = np.round(s, 1)
    assert auroc(t, sr) == pytest.approx(ref_auroc(y, offdiag(sr)), abs=1e-12)


def test_average_precision_is_the_jittable_auprc():
    ap = jax.jit(average_precision)
    t = adj_from_edges(3, [(0, 1), (1, 2)])
    s = np.array([[0, 0.9, 0.3], [0.6, 0, 0.5], [0.1, 0.2, 0]])
    assert float(ap(t, s)) == pytest.approx((1 + 2 / 3) / 2)
    s_tied = np.array([[0, 0.9, 0.3], [0.5, 0, 0.5], [0.1, 0.2, 0]])
    assert float(ap(t, s_tied)) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert float(ap(t, np.full((3, 3), 0.4))) == pytest.approx(2 / 6)
    assert float(ap(t, t)) == 1.0
    assert math.isnan(float(ap(np.zeros((4, 4)), np.random.default_rng(0).random((4, 4)))))
    # Padding is ignored even where its scores are the highest.
    t4 = adj_from_edges(4, [(0, 1), (1, 2)])
    s4 = np.array([[0, 0.9, 0.3, 0.99], [0.6, 0, 0.5, 0.99], [0.1, 0.2, 0, 0.99],
                   [0.99, 0.99, 0.99, 0]])
    assert float(ap(t4, s4, np.array([True, True, True, False]))) == pytest.approx((1 + 2 / 3) / 2)
    # Random graphs, scores with many ties, random masks: equal to the host version.
    rng = np.random.default_rng(3)
    batch_t, batch_s, batch_m = [], [], []
    for _ in range(40):
        t = (rng.random((6, 6)) < 0.3).astype(np.float32)
        np.fill_diagonal(t, 0)
        t[0, 1] = 1.0
        batch_t.append(t)
        batch_s.append(np.round(rng.random((6, 6)), 1).astype(np.float32))
        m = rng.random(6) < 0.8
        m[:2] = True
        batch_m.append(m)
    got = np.asarray(jax.jit(jax.vmap(average_precision))(np.stack(batch_t), np.stack(batch_s),
                                                          np.stack(batch_m)))
    want = [auprc(t, s, m) for t, s, m in zip(batch_t, batch_s, batch_m)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_auroc_var_mask():
    t = adj_from_edges(4, [(0, 1), (1, 2)])
    s = np.array([[0, 0.9, 0.3, 0.99], [0.6, 0, 0.5, 0.99], [0.1, 0.2, 0, 0.99],
                  [0.99, 0.99, 0.99, 0]])
    mask = np.array([True, True, True, False])
    assert auroc(t, s, mask) == pytest.approx(7 / 8)
    assert auprc(t, s, mask) == pytest.approx((1 + 2 / 3) / 2)


# --------------------------------------------------------------------------- properties

@st.composite
def dag_pair(draw):
    d = draw(st.integers(2, 6))

    def one():
        perm = draw(st.permutations(list(range(d))))
        bits = draw(st.lists(st.booleans(), min_size=d * d, max_size=d * d))
        a = np.zeros((d, d), np.float32)
        for k, b in enumerate(bits):
            i, j = divmod(k, d)
            if b and i < j:
                a[perm[i], perm[j]] = 1.0
        return a

    return one(), one(), one()


@settings(max_examples=50, deadline=None, database=None)
@given(dag_pair())
def test_shd_and_prf_properties(gh):
    g, h, k = gh
    d = g.shape[0]
    n_pairs = d * (d - 1) // 2
    s_gh = int(shd(g, h))
    assert int(shd(g, g)) == 0
    assert s_gh == int(shd(h, g))
    assert 0 <= s_gh <= n_pairs
    assert s_gh == ref_shd(g, h)
    # SHD is a Hamming distance over pair states, hence a metric.
    assert int(shd(g, k)) <= s_gh + int(shd(h, k))
    m = as_py(structure_metrics(g, h))
    assert m["shd"] == s_gh
    for key in ("precision", "recall", "f1"):
        assert 0.0 <= m[key] <= 1.0
    assert m["tp"] + m["fn"] == g.sum()
    assert m["tp"] + m["fp"] == h.sum()
    same = as_py(structure_metrics(g, g))
    assert same["f1"] == 1.0 and same["shd"] == 0


def test_structure_metrics_under_jit():
    rng = np.random.default_rng(0)
    t = (rng.random((5, 5)) < 0.4).astype(np.float32)
    p = (rng.random((5, 5)) < 0.4).astype(np.float32)
    mask = jnp.array([True, True, True, True, False])
    eager = as_py(structure_metrics(t, p, mask))
    jitted = as_py(jax.jit(structure_metrics)(jnp.asarray(t), jnp.asarray(p), mask))
    assert eager == pytest.approx(jitted)
    # The other jittable functions, once each.
    probs = jnp.asarray(rng.random((5, 5)) * 0.5, jnp.float32)
    assert float(jax.jit(expected_shd)(t, probs, mask)) == pytest.approx(
        float(expected_shd(t, probs, mask)), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(jax.jit(posterior_graph)(probs, mask)),
                                  np.asarray(posterior_graph(probs, mask)))
    pm = jax.jit(parent_metrics)(t, p, jnp.asarray(2), mask)
    assert as_py(pm) == pytest.approx(as_py(parent_metrics(t, p, 2, mask)))
    # vmap over a batch (the intended use at call sites).
    batch = jax.vmap(structure_metrics)(jnp.stack([t, p]), jnp.stack([p, t]))
    assert [int(x) for x in batch["shd"]] == [ref_shd(t, p)] * 2
