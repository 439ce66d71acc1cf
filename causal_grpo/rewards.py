"""Reward terms of Phase 1 and their weights.

A candidate intervention's reward depends on its *outcome*, the sample it produced:

* structure term: how much closer the surrogate's belief gets to the true graph when that
  sample is added, measured as the drop in expected SHD (``metrics.expected_shd``) of the
  exact DAG posterior, before minus after. Positive = the sample taught something true.
  With ``map_share`` = s > 0 the structure term is (1 - s) times that plus s times the drop
  in SHD of the posterior's point estimate (``metrics.posterior_graph``): the point-estimate
  part only pays when a sample flips an edge of the estimate, which is what F1 and SHD
  measure; expected SHD also pays for growing surer of edges the estimate already has right.
* target term: the seed's objective, a lower target value is better; scored as minus the
  target's value standardised by the observational mean and std of the target, so it is
  comparable across SCMs.

``reward = structure_weight * structure + target_weight * target``. Rewards are normalised
inside each group by GRPO, so only their relative sizes within a group matter.

With ``outcomes`` = M > 1 each candidate is executed M times from the same state (M exogenous
noise draws, shared by the whole group) and its reward is the mean over the M outcomes: an
unbiased estimate of the candidate's expected reward with 1/M of the single-outcome variance.
Under large noise one outcome says little about which intervention was better (see README).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from causal_grpo.metrics import expected_shd, posterior_graph, shd

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms."""

    structure_weight: float = 1.0
    target_weight: float = 0.0
    outcomes: int = 1          # outcomes averaged per candidate (static)
    map_share: float = 0.0     # share of the structure term measured on the point estimate


def structure_reward(true_adj: Array, probs_before: Array, probs_after: Array,
                     var_mask: Array, map_share: float = 0.0) -> Array:
    """Drop in expected SHD from ``probs_before`` to ``probs_after`` (both (d, d)), blended
    with the drop in SHD of the point estimate when ``map_share`` > 0."""
    drop = expected_shd(true_adj, probs_before, var_mask) - expected_shd(true_adj, probs_after, var_mask)
    if not map_share:
        return drop
    map_drop = (shd(true_adj, posterior_graph(probs_before, var_mask), var_mask)
                - shd(true_adj, posterior_graph(probs_after, var_mask), var_mask))
    return (1.0 - map_share) * drop + map_share * map_drop


def target_reward(target_value: Array, obs_mean: Array, obs_std: Array) -> Array:
    """Minus the standardised target value (lower target = higher reward)."""
    return -(target_value - obs_mean) / jnp.maximum(obs_std, 1e-6)


def total_reward(cfg: RewardConfig, structure: Array, target: Array) -> Array:
    return cfg.structure_weight * structure + cfg.target_weight * target
