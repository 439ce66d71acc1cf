"""The structure-learner interface shared by every surrogate, and the factory.

A surrogate is a triple of pure functions over an explicit state (the optax pattern)::

    state = surrogate.init(key, var_mask)
    state = surrogate.update(state, values, intervened, valid)   # add rows of data
    probs = surrogate.edge_probs(state)                          # (d, d), probs[i, j] = P(i -> j)
    gap = surrogate.chain_gap(state)                             # () MCMC convergence figure

``values``/``intervened`` are (r, d) rows (``intervened[n, j]`` is True when X_j was set by
``do()`` in row n) and ``valid`` (r,) marks real rows, so a fixed-shape buffer can be passed
whole. Everything is jittable and vmappable; ``update`` caches the edge probabilities so that
reading them costs nothing.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def no_chains(state: Any) -> Array:
    """The ``chain_gap`` of a learner without sampling chains (exact DP, neural): 0."""
    return jnp.zeros((), jnp.float32)


class Surrogate(NamedTuple):
    """Pure-function interface of a structure learner (see module docstring).

    ``chain_gap``: () the largest edge-marginal disagreement between MCMC chains after the
    last update, in [0, 1] (how far from converged a sampled posterior is); 0 without chains.
    """

    init: Callable[[Array, Array], Any]
    update: Callable[[Any, Array, Array, Array], Any]
    edge_probs: Callable[[Any], Array]
    chain_gap: Callable[[Any], Array] = no_chains
    # A cheaper stand-in for many one-row what-if updates from a state (the lookahead's):
    # (state, (d, d) edge probabilities to start from) -> (surrogate, its state).
    # None: the surrogate's own update is cheap enough.
    what_if: Callable[[Any, Array], tuple["Surrogate", Any]] | None = None
    # Rows it keeps (a neural surrogate's buffer; later rows are dropped); None: all.
    capacity: int | None = None


class SurrogateKind(enum.Enum):
    ANALYTIC = "analytic"
    NEURAL = "neural"


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """Which surrogate and its settings; ``analytic``/``neural`` hold the kind-specific config."""

    kind: SurrogateKind = SurrogateKind.ANALYTIC
    analytic: "AnalyticConfig | None" = None
    neural: "NeuralConfig | None" = None

    def __post_init__(self) -> None:
        from causal_grpo.options import member
        member(self, "kind", SurrogateKind)


def make_surrogate(cfg: SurrogateConfig, d: int, capacity: int) -> Surrogate:
    """Build the surrogate for ``d`` (padded) variables and a buffer of ``capacity`` rows."""
    if cfg.kind is SurrogateKind.ANALYTIC:
        from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate
        return make_analytic_surrogate(cfg.analytic or AnalyticConfig(), d)
    from causal_grpo.surrogate_neural import NeuralConfig, make_neural_surrogate
    return make_neural_surrogate(cfg.neural or NeuralConfig(), d, capacity)
