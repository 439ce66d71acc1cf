"""The intervention policy network (the only Haiku module of the package).

Variable-agnostic and equivariant to the order of the variables: one set of weights serves
any number of variables, and permuting the variables permutes the outputs. There are no
per-variable-index weights and no positional encodings.

Inputs (one example; vmap for batches):
  * the data buffer: values (C, d), intervened (C, d), valid (C,), standardised per variable
    over the valid rows; each cell gets channels [standardised value, intervened flag, target
    column flag], is embedded by an MLP, and the cells of a variable are pooled (masked mean
    over all rows and over its intervened rows) into a per-variable summary;
  * per-variable features (d, F) of ``causal_grpo.features`` (one schema for bootstrap and
    surrogate features);
  * the edge probabilities (d, d) those features were computed from.

Body: the summary and features are concatenated, embedded, and passed through ``layers``
pre-norm transformer blocks of self-attention *across variables* (padding masked out).
Each block also reads the belief graph: every ordered pair (i, j) gets an
embedding of (P(i -> j), P(j -> i), pair entropy) that biases each head's attention logits,
and each variable receives messages from its probable children and probable parents (sums
weighted by P(i -> j) and P(j -> i)). Per-variable aggregates alone cannot tell "a parent of
many uncertain edges upstream" from "many weak edges anywhere", which is what decides how
informative an intervention is; the pairwise terms stay equivariant (they permute with i, j).

Outputs:
  * ``var_logits`` (d,): the target and padding variables are masked to -inf; with
    ``lookahead_prior`` they include a learned multiple of each variable's better lookahead
    gain (and ``value_logits`` a tilt towards its better end), so an untrained policy is the
    plug-in chooser softened by that multiple;
  * ``value_logits`` (d, n_bins): a categorical distribution over ``n_bins`` equally spaced
    values spanning the SCM's intervention range, endpoints included (value bins, so exact
    log-probabilities and entropies; the ends of the range are reachable exactly).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from causal_grpo.features import N_FEATURES, masked_pairs
from causal_grpo.scm import column_moments, unit_scale

Array = jax.Array
NEG = -1e9


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Architecture of the policy (all static)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    n_bins: int = 9
    n_features: int = N_FEATURES
    lookahead: int = 1         # 1: features carry 2 more columns, policy.lookahead_features
    # > 0 (needs lookahead): the logits also get a learned multiple of the lookahead, starting
    # at this value, so the policy starts as the softmax of the plug-in gains (see PolicyNet).
    lookahead_prior: float = 2.0

    @property
    def input_features(self) -> int:
        """Width of ``PolicyInput.features``: the feature schema plus the lookahead columns."""
        return self.n_features + 2 * self.lookahead


class PolicyOutput(NamedTuple):
    var_logits: Array     # (d,)
    value_logits: Array   # (d, n_bins)


class PolicyInput(NamedTuple):
    values: Array        # (C, d)
    intervened: Array    # (C, d) bool
    valid: Array         # (C,) bool
    features: Array      # (d, F)
    target: Array        # () int
    var_mask: Array      # (d,) bool
    edge_probs: Array    # (d, d) P(i -> j), the matrix ``features`` came from


def dummy_input(cfg: PolicyConfig, d: int = 4, capacity: int = 8) -> PolicyInput:
    """A zero input of the right shapes, to initialise or shape-check parameters."""
    return PolicyInput(jnp.zeros((capacity, d)), jnp.zeros((capacity, d), bool),
                       jnp.ones((capacity,), bool), jnp.zeros((d, cfg.input_features)),
                       jnp.asarray(0), jnp.ones((d,), bool), jnp.zeros((d, d)))


def _pair_inputs(probs: Array, var_mask: Array) -> Array:
    """(d, d, 3): P(i -> j), P(j -> i), entropy of pair {i, j} / log 3; zero off the real pairs."""
    probs, ent, _ = masked_pairs(probs, var_mask)
    return jnp.stack([probs, probs.T, ent], axis=-1)


class BiasedAttention(hk.Module):
    """Multi-head self-attention across variables with an additive per-head bias (h, d, d)."""

    def __init__(self, heads: int, key_size: int, w_init_scale: float, name: str | None = None):
        super().__init__(name=name)
        self.heads, self.key_size, self.scale = heads, key_size, w_init_scale

    def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
        d = x.shape[0]
        h, k = self.heads, self.key_size
        q = hk.Linear(h * k, name="query")(x).reshape(d, h, k)
        kk = hk.Linear(h * k, name="key")(x).reshape(d, h, k)
        v = hk.Linear(h * k, name="value")(x).reshape(d, h, k)
        logits = jnp.einsum("ihk,jhk->hij", q, kk) / math.sqrt(k) + bias
        logits = jnp.where(mask[None], logits, NEG)
        w = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("hij,jhk->ihk", w, v).reshape(d, h * k)
        return hk.Linear(x.shape[-1], w_init=hk.initializers.VarianceScaling(self.scale),
                         name="out")(out)


def _standardise(values: Array, valid: Array) -> Array:
    w = valid.astype(jnp.float32)[:, None]
    mean, var = column_moments(values, valid)
    # The floor is sized for data of order one; small units are brought to it first.
    sc = unit_scale(var)
    x, var = (values - mean) / sc, var / sc ** 2
    return jnp.clip(x / jnp.sqrt(var + 1e-6), -10.0, 10.0) * w


class PolicyNet(hk.Module):
    def __init__(self, cfg: PolicyConfig, name: str | None = None):
        super().__init__(name=name)
        self.cfg = cfg

    def __call__(self, x: PolicyInput) -> PolicyOutput:
        cfg = self.cfg
        C, d = x.values.shape
        H = cfg.hidden
        is_target = (jnp.arange(d) == x.target).astype(jnp.float32)
        z = _standardise(x.values, x.valid)
        cells = jnp.stack([z, x.intervened.astype(jnp.float32),
                           jnp.broadcast_to(is_target, (C, d))], axis=-1)      # (C, d, 3)
        h = hk.nets.MLP([H, H], activate_final=True, name="cell_mlp")(cells)   # (C, d, H)
        w_all = x.valid.astype(jnp.float32)[:, None, None]
        w_int = w_all * x.intervened.astype(jnp.float32)[..., None]
        pooled = jnp.concatenate([
            (h * w_all).sum(0) / jnp.maximum(w_all.sum(0), 1.0),
            (h * w_int).sum(0) / jnp.maximum(w_int.sum(0), 1.0),
        ], axis=-1)                                                             # (d, 2H)
        e = jnp.concatenate([pooled, x.features], axis=-1)
        e = hk.nets.MLP([H, H], activate_final=False, name="var_embed")(e)     # (d, H)

        mask = x.var_mask[None, :] & x.var_mask[:, None]                        # (d, d)
        pin = _pair_inputs(x.edge_probs, x.var_mask)
        pe = hk.nets.MLP([H // 2, H // 2], activate_final=True, name="pair_mlp")(pin)
        p_child, p_parent = pin[..., 0], pin[..., 1]                            # (d, d)
        n_other = jnp.maximum(x.var_mask.sum() - 1.0, 1.0)
        for i in range(cfg.layers):
            ln1 = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=f"ln1_{i}")
            y = ln1(e)
            bias = hk.Linear(cfg.heads, name=f"pair_bias_{i}")(pe).transpose(2, 0, 1)
            attn = BiasedAttention(cfg.heads, H // cfg.heads, 1.0 / cfg.layers, name=f"battn_{i}")
            e = e + attn(y, bias, mask)
            msg = jnp.concatenate([p_child @ y, p_parent @ y], axis=-1) / n_other
            e = e + hk.Linear(H, w_init=hk.initializers.VarianceScaling(1.0 / cfg.layers),
                              name=f"pair_msg_{i}")(msg)
            ln2 = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=f"ln2_{i}")
            e = e + hk.nets.MLP([2 * H, H], name=f"ff_{i}")(ln2(e))
        e = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name="ln_out")(e)

        allowed = x.var_mask & (jnp.arange(d) != x.target)
        var_logits = hk.Linear(1, w_init=jnp.zeros, name="var_head")(e)[:, 0]
        var_logits = jnp.where(allowed, var_logits, NEG)
        value_logits = hk.Linear(cfg.n_bins, w_init=jnp.zeros, name="value_head")(e)
        if cfg.lookahead and cfg.lookahead_prior > 0:
            # A network that reads the lookahead as one input column among many does not learn
            # to follow it (docs/EXPERIMENTS.md, "How much is there to gain?"): GRPO's signal is
            # too weak to discover a ranking it already has as an input. Adding it to the logits
            # directly makes the plug-in chooser the starting point; the scales and the heads
            # learn how far to trust it and what to add.
            la = x.features[:, -2:]                                              # (d, 2) low, high
            init = hk.initializers.Constant(cfg.lookahead_prior)
            s_var = hk.get_parameter("lookahead_var_scale", (), init=init)
            s_val = hk.get_parameter("lookahead_value_scale", (), init=init)
            var_logits = var_logits + jnp.where(allowed, s_var * la.max(-1), 0.0)
            tilt = jnp.linspace(-1.0, 1.0, cfg.n_bins)                          # low end -> high end
            value_logits = value_logits + s_val * 0.5 * (la[:, 1:] - la[:, :1]) * tilt
        return PolicyOutput(var_logits, value_logits)


def make_policy(cfg: PolicyConfig) -> hk.Transformed:
    """``init(key, PolicyInput)`` / ``apply(params, None, PolicyInput)`` for one example."""
    return hk.transform(lambda x: PolicyNet(cfg, name="policy")(x))


def bin_values(low: Array, high: Array, n_bins: int) -> Array:
    """(n_bins,) the values of the value bins: equally spaced over [low, high]."""
    return low + (high - low) * jnp.linspace(0.0, 1.0, n_bins)


def action_log_prob(out: PolicyOutput, variable: Array, value_bin: Array) -> Array:
    """log pi(variable, bin) = log pi(variable) + log pi(bin | variable)."""
    lv = jax.nn.log_softmax(out.var_logits)
    lb = jax.nn.log_softmax(out.value_logits[variable])
    return lv[variable] + lb[value_bin]


def entropy(out: PolicyOutput) -> Array:
    """Exact entropy of the joint (variable, bin) distribution."""
    lv = jax.nn.log_softmax(out.var_logits)
    pv = jnp.exp(lv)
    lb = jax.nn.log_softmax(out.value_logits, axis=-1)
    hb = -(jnp.exp(lb) * lb).sum(-1)
    return -(pv * jnp.where(pv > 0, lv, 0.0)).sum() + (pv * hb).sum()


def kl_divergence(out: PolicyOutput, ref: PolicyOutput) -> Array:
    """Exact KL(pi || ref) of the joint (variable, bin) distributions."""
    lv, lr = jax.nn.log_softmax(out.var_logits), jax.nn.log_softmax(ref.var_logits)
    pv = jnp.exp(lv)
    lb = jax.nn.log_softmax(out.value_logits, axis=-1)
    lbr = jax.nn.log_softmax(ref.value_logits, axis=-1)
    kl_b = (jnp.exp(lb) * (lb - lbr)).sum(-1)
    return (pv * (jnp.where(pv > 0, lv - lr, 0.0) + kl_b)).sum()


def sample_action(key: Array, out: PolicyOutput, greedy: bool = False) -> tuple[Array, Array, Array]:
    """(variable, value_bin, log_prob) sampled from (or the mode of) the policy."""
    k1, k2 = jax.random.split(key)
    if greedy:
        j = jnp.argmax(out.var_logits)
        b = jnp.argmax(out.value_logits[j])
    else:
        j = jax.random.categorical(k1, out.var_logits)
        b = jax.random.categorical(k2, out.value_logits[j])
    return j, b, action_log_prob(out, j, b)
