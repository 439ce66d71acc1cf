"""Per-variable features for intervention policies: one schema, two sources.

``features_from_probs`` turns an edge-probability matrix plus the data buffer into a (d, F)
array. Its two sources:

* **surrogate features** (Phase 2): the matrix is the surrogate's posterior, learnt from data.
* **bootstrap features** (Phase 1, and the labelled ``grpo_bootstrap`` reference): the matrix
  is the *true* graph blended with static noise, ``P = (1 - lam_t) * adj + lam_t * U``, where U
  is one uniform(0, 1) matrix drawn per episode and ``lam_t = lam_0 * exp(-t / tau)`` decays
  with the intervention step t (defaults lam_0 = 0.5, tau = 10). With ``lam_0 = 0`` the
  bootstrap features equal the surrogate features of a surrogate certain of the true graph.

Feature columns (``FEATURE_NAMES``), all in [0, 1]:

0. ``parent_of_target``: P(j -> target).
1. ``child_of_target``: P(target -> j).
2. ``edge_uncertainty``: mean over the other variables k of the entropy of pair {j, k}
   (three states: none, j -> k, k -> j), divided by log 3.
3. ``unoriented``: mean over k of 2 * min(P(j -> k), P(k -> j)) (adjacent, direction unknown).
4. ``out_degree``: expected number of children / (d - 1).
5. ``in_degree``: expected number of parents / (d - 1).
6. ``intervened_frac``: share of the interventions so far that targeted j.
7. ``is_target``: 1 for the target.
8. ``progress``: interventions so far / (interventions so far + 10), the same for every j.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from causal_grpo.metrics import pair_entropy, pair_probs

Array = jax.Array

FEATURE_NAMES = ("parent_of_target", "child_of_target", "edge_uncertainty", "unoriented",
                 "out_degree", "in_degree", "intervened_frac", "is_target", "progress")
N_FEATURES = len(FEATURE_NAMES)


class Buffer(NamedTuple):
    """Fixed-capacity data buffer: values (C, d), intervened (C, d) bool, valid (C,) bool."""

    values: Array
    intervened: Array
    valid: Array

    @staticmethod
    def empty(capacity: int, d: int) -> "Buffer":
        return Buffer(jnp.zeros((capacity, d), jnp.float32), jnp.zeros((capacity, d), bool),
                      jnp.zeros((capacity,), bool))

    def write(self, row: Array, values: Array, intervened: Array) -> "Buffer":
        return Buffer(self.values.at[row].set(values), self.intervened.at[row].set(intervened),
                      self.valid.at[row].set(True))


def masked_pairs(probs: Array, var_mask: Array) -> tuple[Array, Array, Array]:
    """Edge probabilities and pair entropies (/ log 3), both zero off the real ordered pairs,
    and the (d, d) mask of those pairs; shared by the features and the policy's pair inputs."""
    d = probs.shape[-1]
    real = var_mask.astype(jnp.float32)
    pair = real[:, None] * real[None, :] * (1.0 - jnp.eye(d))
    probs = probs * pair
    return probs, pair_entropy(probs) * pair / math.log(3.0), pair


def features_from_probs(probs: Array, buffer: Buffer, target: Array, var_mask: Array) -> Array:
    """(d, F) features of every variable from edge probabilities (d, d) and the buffer."""
    d = probs.shape[-1]
    real = var_mask.astype(jnp.float32)
    probs, ent, pair = masked_pairs(probs, var_mask)
    n_other = jnp.maximum(real.sum() - 1.0, 1.0)
    p, q, _ = pair_probs(probs)
    n_int = jnp.sum(buffer.intervened & buffer.valid[:, None], axis=0).astype(jnp.float32)
    total = n_int.sum()
    onehot_t = (jnp.arange(d) == target).astype(jnp.float32)
    feats = jnp.stack([
        probs[:, target],
        probs[target, :],
        ent.sum(1) / n_other,
        (2.0 * jnp.minimum(p, q) * pair).sum(1) / n_other,
        probs.sum(1) / n_other,
        probs.sum(0) / n_other,
        n_int / jnp.maximum(total, 1.0),
        onehot_t,
        jnp.full((d,), total / (total + 10.0)),
    ], axis=-1)
    return feats * real[:, None]


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """Noise schedule of bootstrap features: ``lam_t = lam0 * exp(-t / tau)``."""

    lam0: float = 0.5
    tau: float = 10.0


def bootstrap_noise(key: Array, d: int) -> Array:
    """The static per-episode noise matrix U ~ uniform(0, 1), (d, d)."""
    return jax.random.uniform(key, (d, d))


def bootstrap_probs(true_adj: Array, noise: Array, step: Array, cfg: BootstrapConfig) -> Array:
    """Noisy true-graph edge probabilities at intervention step ``step``."""
    lam = cfg.lam0 * jnp.exp(-step / cfg.tau)
    return (1.0 - lam) * true_adj + lam * noise * (1.0 - jnp.eye(true_adj.shape[-1]))
