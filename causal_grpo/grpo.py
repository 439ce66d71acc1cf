"""Group Relative Policy Optimisation: group advantages, the clipped loss, KL, the update.

A *group* is G candidate actions sampled from the policy in the *same* state. Rewards are
normalised inside the group (mean and std), and the PPO-style clipped ratio uses the log-probabilities recorded when the candidates were
sampled (``logp_old``) and the very inputs the policy acted on (``Batch.inputs``): nothing is
rebuilt at update time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from causal_grpo.networks import PolicyInput, action_log_prob, entropy, kl_divergence
from causal_grpo.options import option

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO hyper-parameters (``group_size`` and ``epochs`` are static)."""

    group_size: int = option(16, "--group-size", "candidates per state (G)", low=2, high=256)
    clip_eps: float = option(0.2, "--clip-eps", "PPO clip range of the probability ratio",
                             low=0.0, high=1.0, open_low=True, open_high=True)
    entropy_coef: float = option(0.01, "--entropy-coef", "weight of the entropy bonus",
                                 low=0.0, high=100.0)
    kl_coef: float = option(0.0, "--kl-coef", "weight of the KL to the initial policy",
                            low=0.0, high=100.0)
    learning_rate: float = option(3e-4, "--learning-rate", "Adam step size", low=0.0, high=1.0,
                                  open_low=True)
    max_grad_norm: float = 1.0
    epochs: int = 2


def group_advantages(rewards: Array, eps: float = 1e-6) -> Array:
    """(G,) advantages of one group: rewards minus their mean, divided by their std.

    A group whose rewards are all equal gets zero advantages (no signal, no NaN).
    """
    centred = rewards - rewards.mean()
    std = rewards.std()
    return jnp.where(std > eps, centred / jnp.maximum(std, eps), 0.0)


def clipped_objective(logp: Array, logp_old: Array, adv: Array, eps_low: float,
                      eps_high: float) -> tuple[Array, Array]:
    """Per-sample PPO surrogate ``min(r A, clip(r, 1-eps_low, 1+eps_high) A)`` and clip flag."""
    ratio = jnp.exp(logp - logp_old)
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    obj = jnp.minimum(ratio * adv, clipped * adv)
    return obj, (jnp.abs(ratio - clipped) > 0).astype(jnp.float32)


class Batch(NamedTuple):
    """N states with G candidates each, exactly as collected.

    inputs: PolicyInput with leading axis N (what the policy saw when acting);
    variable / value_bin / logp_old / advantages: (N, G).
    """

    inputs: PolicyInput
    variable: Array
    value_bin: Array
    logp_old: Array
    advantages: Array


class TrainState(NamedTuple):
    params: Any
    opt_state: optax.OptState
    ref_params: Any
    step: Array


def make_optimizer(cfg: GRPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.learning_rate))


def init_train_state(params: Any, cfg: GRPOConfig) -> TrainState:
    return TrainState(params, make_optimizer(cfg).init(params), params, jnp.zeros((), jnp.int32))


def grpo_loss(params: Any, ref_params: Any, batch: Batch, policy: hk.Transformed,
              cfg: GRPOConfig) -> tuple[Array, dict]:
    """Mean clipped-surrogate loss over all N x G candidates, minus entropy, plus KL."""

    def per_state(inp, var, vbin, lp_old, adv):
        out = policy.apply(params, None, inp)
        logp = jax.vmap(lambda j, b: action_log_prob(out, j, b))(var, vbin)
        obj, clip = clipped_objective(logp, lp_old, adv, cfg.clip_eps, cfg.clip_eps)
        kl = (kl_divergence(out, policy.apply(ref_params, None, inp)) if cfg.kl_coef > 0
              else jnp.zeros(()))
        return obj.mean(), clip.mean(), entropy(out), kl, (lp_old - logp).mean()

    obj, clip, ent, kl, approx_kl = jax.vmap(per_state)(
        batch.inputs, batch.variable, batch.value_bin, batch.logp_old, batch.advantages)
    loss = -obj.mean() - cfg.entropy_coef * ent.mean() + cfg.kl_coef * kl.mean()
    return loss, {"loss": loss, "clip_frac": clip.mean(), "entropy": ent.mean(),
                  "kl_ref": kl.mean(), "approx_kl_old": approx_kl.mean()}


def update(state: TrainState, batch: Batch, policy: hk.Transformed, cfg: GRPOConfig
           ) -> tuple[TrainState, dict]:
    """``cfg.epochs`` full-batch Adam steps on one collected batch (jit at the call site)."""
    opt = make_optimizer(cfg)

    def epoch(carry, _):
        params, opt_state = carry
        (_, metrics), grads = jax.value_and_grad(grpo_loss, has_aux=True)(
            params, state.ref_params, batch, policy, cfg)
        updates, opt_state = opt.update(grads, opt_state, params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return (optax.apply_updates(params, updates), opt_state), metrics

    (params, opt_state), metrics = jax.lax.scan(epoch, (state.params, state.opt_state), None,
                                                length=cfg.epochs)
    # Loss/entropy as measured before this batch's steps; ratio statistics from the last epoch
    # (in the first epoch the ratio is exactly 1 by construction).
    first = jax.tree.map(lambda m: m[0], metrics)
    last = jax.tree.map(lambda m: m[-1], metrics)
    metrics = first | {"clip_frac": last["clip_frac"], "approx_kl_old": last["approx_kl_old"]}
    return TrainState(params, opt_state, state.ref_params, state.step + 1), metrics
