"""Reward terms of Phase 1 and their weights.

A candidate intervention's reward depends on its *outcome*, the sample it produced:

* structure term: how much closer the surrogate's belief gets to the true graph when that
  sample is added, measured as the drop in expected SHD (``metrics.expected_shd``) of the
  exact DAG posterior, before minus after. Positive = the sample taught something true.
* target term: the seed's objective, a lower target value is better; scored as minus the
  target's value standardised by the observational mean and std of the target, so it is
  comparable across SCMs.

``reward = structure_weight * structure + target_weight * target``. Rewards are normalised
inside each group by GRPO, so only their relative sizes within a group matter.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from causal_grpo.metrics import expected_shd

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms."""

    structure_weight: float = 1.0
    target_weight: float = 0.0


def structure_reward(true_adj: Array, probs_before: Array, probs_after: Array,
                     var_mask: Array) -> Array:
    """Drop in expected SHD from ``probs_before`` to ``probs_after`` (both (d, d))."""
    return (expected_shd(true_adj, probs_before, var_mask)
            - expected_shd(true_adj, probs_after, var_mask))


def target_reward(target_value: Array, obs_mean: Array, obs_std: Array) -> Array:
    """Minus the standardised target value (lower target = higher reward)."""
    return -(target_value - obs_mean) / jnp.maximum(obs_std, 1e-6)


def total_reward(cfg: RewardConfig, structure: Array, target: Array) -> Array:
    return cfg.structure_weight * structure + cfg.target_weight * target
