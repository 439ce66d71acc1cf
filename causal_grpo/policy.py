"""The policy as a Phase-2 selector; one function builds its input in both phases.

``policy_input(obs)`` is the only way an :class:`~causal_grpo.active_learning.Observation` becomes
a network input, in Phase-1 rollouts and in Phase-2 episodes alike, so the states the loss
sees are exactly the states the policy acted on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from causal_grpo.active_learning import Action, Observation, Selector
from causal_grpo.networks import PolicyConfig, PolicyInput, bin_values, make_policy, sample_action

Array = jax.Array


def policy_input(obs: Observation) -> PolicyInput:
    return PolicyInput(obs.buffer.values, obs.buffer.intervened, obs.buffer.valid, obs.features,
                       obs.target, obs.var_mask, obs.probs)


def make_policy_selector(cfg: PolicyConfig, greedy: bool = False) -> Selector:
    """A pure selector ``(key, obs, params) -> Action`` that samples (or takes the mode of) pi."""
    net = make_policy(cfg)

    def select(key: Array, obs: Observation, params: Any) -> Action:
        out = net.apply(params, None, policy_input(obs))
        j, b, lp = sample_action(key, out, greedy)
        v = bin_values(obs.low, obs.high, cfg.n_bins)[b]
        return Action(j.astype(jnp.int32), v.astype(jnp.float32), lp, jnp.asarray(True))

    return select
