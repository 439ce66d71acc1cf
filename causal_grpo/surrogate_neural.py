"""A learnable neural structure learner, trained online and self-supervised from data alone.

Model (DCDI-style, Brouillard et al. 2020): each variable j has a conditional Gaussian
``X_j | X ~ N(mu_j(G[:, j] * X), sigma_j^2)`` whose mean is a small MLP (with a linear skip) of
its *gated* inputs; the gates ``G[i, j] ~ Bernoulli(sigmoid(theta[i, j]))`` are sampled per row
with a straight-through Gumbel-sigmoid, so ``sigmoid(theta)`` are genuine edge probabilities and
the network cannot hide an edge behind a small gate and a large weight.

Loss on the buffer: the interventional negative log-likelihood (entries of intervened variables
are not explained, exactly as in the analytic surrogate), plus an L1 penalty on the edge
probabilities and the NOTEARS acyclicity penalty ``tr(exp(P ∘ P)) - d``. After every new
sample the parameters take ``steps_per_sample`` Adam steps at ``learning_rate`` (the seed's
``--learning-rate``, default 1e-3) on the whole buffer.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from causal_grpo.scm import EXACT, column_moments, unit_scale
from causal_grpo.surrogate import Surrogate

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class NeuralConfig:
    """Settings of the neural surrogate (``hidden`` and the step counts are static)."""

    learning_rate: float = 1e-3
    hidden: int = 4
    steps_per_sample: int = 20
    theta_init: float = -1.0
    l1: float = 0.02
    acyclicity: float = 0.5
    temperature: float = 0.5


class NeuralParams(NamedTuple):
    theta: Array      # (d, d) edge logits, theta[i, j] for i -> j
    w: Array          # (d, d) linear weights
    u: Array          # (H, d, d) hidden-layer weights per child
    c: Array          # (H, d) hidden biases
    v: Array          # (H, d) output weights of the hidden layer
    b: Array          # (d,) intercepts
    log_sigma: Array  # (d,)


class NeuralState(NamedTuple):
    params: NeuralParams
    opt_state: optax.OptState
    key: Array
    values: Array       # (C, d) own copy of the data
    intervened: Array   # (C, d)
    valid: Array        # (C,)
    count: Array        # () rows stored
    var_mask: Array
    edge_probs: Array


def _mask(var_mask: Array) -> Array:
    d = var_mask.shape[0]
    return (var_mask[:, None] & var_mask[None, :] & ~jnp.eye(d, dtype=bool)).astype(jnp.float32)


def _acyclicity(p: Array) -> Array:
    """NOTEARS h(P) = tr(exp(P∘P)) - d via the truncated power series (P∘P is nilpotent on DAGs)."""
    d = p.shape[0]
    a = p * p
    term, total = jnp.eye(d), jnp.zeros(())
    for k in range(1, d + 1):
        term = jnp.matmul(term, a, precision=EXACT) / k
        total = total + jnp.trace(term)
    return total


def make_neural_surrogate(cfg: NeuralConfig, d: int, capacity: int) -> Surrogate:
    """The online neural surrogate for ``d`` variables and ``capacity`` buffer rows."""
    opt = optax.adam(cfg.learning_rate)
    H = cfg.hidden

    def predict(params: NeuralParams, x: Array, gates: Array) -> Array:
        """(d,) predicted means of one row x (d,) under gates (d, d)."""
        gx = gates * x[:, None]                                   # [i, j]: input i to child j
        lin = jnp.sum(gx * params.w, axis=0)
        hid = jnp.tanh(jnp.einsum("ij,hij->hj", gx, params.u, precision=EXACT) + params.c)
        return params.b + lin + jnp.sum(params.v * hid, axis=0)

    def loss_fn(params, key, values, intervened, valid, var_mask):
        m = _mask(var_mask)
        # Its initial weights and learning rate are sized for data of order one or more: small
        # units are brought to it (a full standardisation changes its fit on the built-in SCMs,
        # docs/EXPERIMENTS.md).
        values = values / unit_scale(column_moments(values, valid)[1])
        probs = jax.nn.sigmoid(params.theta) * m
        # Straight-through Gumbel-sigmoid gates, one graph per row.
        logistic = jax.random.logistic(key, (values.shape[0], d, d))
        soft = jax.nn.sigmoid((params.theta[None] + logistic) / cfg.temperature)
        hard = (soft > 0.5).astype(jnp.float32)
        gates = (hard + soft - jax.lax.stop_gradient(soft)) * m[None]
        mu = jax.vmap(predict, in_axes=(None, 0, 0))(params, values, gates)
        sigma2 = jnp.exp(2 * params.log_sigma)
        nll = 0.5 * (values - mu) ** 2 / sigma2 + params.log_sigma
        w = (valid[:, None] & ~intervened & var_mask[None, :]).astype(jnp.float32)
        nll = jnp.sum(nll * w) / jnp.maximum(w.sum(), 1.0)
        n_real = jnp.maximum(var_mask.sum(), 1)
        reg = cfg.l1 * probs.sum() / n_real + cfg.acyclicity * _acyclicity(probs)
        return nll + reg

    def train(state: NeuralState, steps: int, taken: Array) -> NeuralState:
        """``taken`` of the ``steps`` (static: the scan's length) Adam steps; the rest leave
        the parameters as they are."""
        def one(carry, xs):
            i, k = xs
            params, opt_state = carry
            g = jax.grad(loss_fn)(params, k, state.values, state.intervened, state.valid,
                                  state.var_mask)
            upd, new_opt = opt.update(g, opt_state, params)
            new = (optax.apply_updates(params, upd), new_opt)
            return jax.tree_util.tree_map(lambda a, b: jnp.where(i < taken, a, b), new,
                                          carry), None

        key, sub = jax.random.split(state.key)
        (params, opt_state), _ = jax.lax.scan(one, (state.params, state.opt_state),
                                              (jnp.arange(steps), jax.random.split(sub, steps)))
        probs = jax.nn.sigmoid(params.theta) * _mask(state.var_mask)
        return state._replace(params=params, opt_state=opt_state, key=key, edge_probs=probs)

    def init(key: Array, var_mask: Array) -> NeuralState:
        k_w, k_u, k_v, k_s = jax.random.split(key, 4)
        params = NeuralParams(
            theta=jnp.full((d, d), cfg.theta_init, jnp.float32),
            w=0.1 * jax.random.normal(k_w, (d, d)),
            u=0.1 * jax.random.normal(k_u, (H, d, d)),
            c=jnp.zeros((H, d)),
            v=0.1 * jax.random.normal(k_v, (H, d)),
            b=jnp.zeros((d,)),
            log_sigma=jnp.zeros((d,)),
        )
        var_mask = var_mask.astype(bool)
        return NeuralState(params, opt.init(params), k_s, jnp.zeros((capacity, d), jnp.float32),
                           jnp.zeros((capacity, d), bool), jnp.zeros((capacity,), bool),
                           jnp.zeros((), jnp.int32), var_mask,
                           jax.nn.sigmoid(params.theta) * _mask(var_mask))

    def update(state: NeuralState, values: Array, intervened: Array, valid: Array) -> NeuralState:
        r = values.shape[0]
        # Rows are appended at `count`; an overfull buffer keeps its first `capacity` rows.
        idx = state.count + jnp.cumsum(valid) - 1
        ok = valid & (idx < capacity)
        idx = jnp.where(ok, idx, capacity)                      # out of range -> dropped
        state = state._replace(
            values=state.values.at[idx].set(values, mode="drop"),
            intervened=state.intervened.at[idx].set(intervened.astype(bool), mode="drop"),
            valid=state.valid.at[idx].set(True, mode="drop"),
            count=state.count + ok.sum().astype(jnp.int32),
        )
        # Steps per valid sample, not per row given: a refit from a padded buffer (the
        # choosers refit from obs.buffer) trains as the episode's own posterior did.
        return train(state, cfg.steps_per_sample * r, cfg.steps_per_sample * valid.sum())

    return Surrogate(init=init, update=update, edge_probs=lambda s: s.edge_probs,
                     capacity=capacity)
