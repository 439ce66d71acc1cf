"""The policy network: equivariance to variable order, padding, and the belief-graph inputs."""

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo.features import Buffer, features_from_probs
from causal_grpo.networks import PolicyConfig, PolicyInput, dummy_input, make_policy


def _random_params(cfg, seed=0):
    """Initial params with every leaf perturbed (the heads start at zero, which hides bugs)."""
    params = jax.jit(make_policy(cfg).init)(jax.random.PRNGKey(seed), dummy_input(cfg))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _input(d, C=12, n_valid=9, target=2, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(C, d)).astype(np.float32)
    intervened = np.zeros((C, d), bool)
    intervened[6, 0] = intervened[7, 3] = intervened[8, 1] = True
    valid = np.arange(C) < n_valid
    probs = rng.uniform(size=(d, d)).astype(np.float32) * (1 - np.eye(d, dtype=np.float32))
    buf = Buffer(jnp.asarray(values), jnp.asarray(intervened), jnp.asarray(valid))
    mask = jnp.ones((d,), bool)
    feats = features_from_probs(jnp.asarray(probs), buf, jnp.asarray(target), mask)
    # The lookahead columns of the default config (policy.lookahead_features: 0 on the target).
    la = rng.normal(size=(d, 2)).astype(np.float32) * (np.arange(d) != target)[:, None]
    feats = jnp.concatenate([feats, jnp.asarray(la)], -1)
    return PolicyInput(buf.values, buf.intervened, buf.valid, feats, jnp.asarray(target), mask,
                       jnp.asarray(probs))


def _permute(x: PolicyInput, perm: np.ndarray) -> PolicyInput:
    inv = np.argsort(perm)
    return PolicyInput(x.values[:, perm], x.intervened[:, perm], x.valid, x.features[perm],
                       jnp.asarray(inv[int(x.target)]), x.var_mask[perm],
                       x.edge_probs[perm][:, perm])


def _logit_change(cfg, x, y):
    """Largest change of a real variable's logit between inputs x and y (random weights)."""
    net, params = make_policy(cfg), _random_params(cfg)
    apply = jax.jit(net.apply)
    a, b = apply(params, None, x), apply(params, None, y)
    return float(jnp.max(jnp.abs(jnp.where(x.var_mask, a.var_logits - b.var_logits, 0.0))))


def test_permuting_variables_permutes_outputs():
    cfg = PolicyConfig()
    net, params = make_policy(cfg), _random_params(cfg)
    x = _input(6)
    perm = np.array([4, 0, 5, 2, 1, 3])
    apply = jax.jit(net.apply)
    out, out_p = apply(params, None, x), apply(params, None, _permute(x, perm))
    np.testing.assert_allclose(out_p.var_logits, out.var_logits[perm], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out_p.value_logits, out.value_logits[perm], rtol=1e-4, atol=1e-4)
    assert out.var_logits[2] < -1e8                         # the target is masked out


def test_padding_does_not_change_real_outputs():
    cfg = PolicyConfig()
    net, params = make_policy(cfg), _random_params(cfg)
    x = _input(5)
    pad = 3
    xp = PolicyInput(jnp.pad(x.values, ((0, 0), (0, pad))), jnp.pad(x.intervened, ((0, 0), (0, pad))),
                     x.valid, jnp.pad(x.features, ((0, pad), (0, 0))), x.target,
                     jnp.pad(x.var_mask, (0, pad)), jnp.pad(x.edge_probs, ((0, pad), (0, pad))))
    out, outp = jax.jit(net.apply)(params, None, x), jax.jit(net.apply)(params, None, xp)
    np.testing.assert_allclose(outp.var_logits[:5], out.var_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outp.value_logits[:5], out.value_logits, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(outp.var_logits[5:]) < -1e8)


def test_belief_graph_reaches_the_output():
    """Same per-variable features, different edge matrix: the pairwise terms notice.

    (In use the features are computed from the same matrix; they are held fixed here to
    isolate the pairwise path.)
    """
    x = _input(6)
    y = x._replace(edge_probs=jnp.asarray(np.random.default_rng(5).uniform(size=(6, 6))
                                          * (1 - np.eye(6)), jnp.float32))
    assert _logit_change(PolicyConfig(), x, y) > 1e-3


def test_the_lookahead_prior_is_the_starting_policy():
    """With heads at their zero init, the logits are exactly the scaled lookahead: variables by
    their better end, values tilted towards the end with the larger gain."""
    cfg = PolicyConfig(hidden=16, layers=1, heads=2, lookahead=1, lookahead_prior=2.0)
    x = _input(4, target=2)
    la = jnp.asarray([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0], [-0.5, -1.5]])
    x = x._replace(features=x.features.at[:, -2:].set(la))
    net = make_policy(cfg)
    out = jax.jit(net.apply)(net.init(jax.random.PRNGKey(0), x), None, x)
    np.testing.assert_allclose(np.asarray(out.var_logits)[[0, 1, 3]], [2.0, 4.0, -1.0], atol=1e-5)
    assert float(out.var_logits[2]) < -1e8                      # the target stays masked
    tilt = np.linspace(-1.0, 1.0, cfg.n_bins)
    np.testing.assert_allclose(np.asarray(out.value_logits[1]), 2.0 * 0.5 * (-3.0) * tilt,
                               atol=1e-5)
    assert int(jnp.argmax(out.value_logits[0])) == cfg.n_bins - 1   # high end gains more
