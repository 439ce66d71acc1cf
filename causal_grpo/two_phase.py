"""The seed document's three-step Python workflow, working end to end::

    from causal_grpo.two_phase import (load_grpo_policy, create_grpo_intervention_fn,
                                       run_active_learning)
    from causal_grpo.scm_families import medium

    scm = medium()
    loaded_policy = load_grpo_policy("grpo_runs/default/final")             # step 1
    intervention_fn = create_grpo_intervention_fn(                           # step 2
        loaded_policy=loaded_policy, scm=scm, intervention_range=(-2.0, 2.0))
    result = run_active_learning(                                            # step 3
        scm=scm, config=EpisodeConfig(n_observational=30, n_interventions=50),
        surrogate=None, intervention_fn=intervention_fn)
    print(result["structure_learning_metrics"]["final_f1"])

``run_active_learning`` is the equivalent of the seed's
``run_progressive_learning_demo_with_scm(scm=..., config=..., pretrained_surrogate=None,
pretrained_acquisition=intervention_fn)``: ``surrogate=None`` creates a fresh learning
surrogate (it learns from the data alone), and ``intervention_fn`` chooses every intervention
from its own history. It steps in Python, one jitted step at a time, so any callable with
``observe(values, intervened)`` and ``() -> (variable, value)`` can drive it. For sweeps use
the jitted ``jobs.two_phase_training`` (same data for the same seed: both derive the
observational data and the step noise from the cell key).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo import metrics as M
from causal_grpo.active_learning import EpisodeConfig, cell_keys
from causal_grpo.checkpoint import (GRPOInterventionFn, LoadedPolicy, create_grpo_intervention_fn,
                                    load_grpo_policy)
from causal_grpo.errors import UserError
from causal_grpo.scm import SCMSpec, propagate, sample_n
from causal_grpo.scm_families import resolve_scm
from causal_grpo.surrogate import Surrogate, make_surrogate
from causal_grpo.sweep import cell_scm_and_key

__all__ = ["load_grpo_policy", "create_grpo_intervention_fn", "run_active_learning",
           "GRPOInterventionFn", "LoadedPolicy"]


class _RandomFn:
    """Uniform random non-target variable and value (the default intervention function)."""

    def __init__(self, d: int, target: int, low: float, high: float, seed: int):
        self.d, self.target, self.low, self.high = d, target, low, high
        self.rng = np.random.default_rng(seed)

    def observe(self, values, intervened=None) -> None:
        pass

    def __call__(self) -> tuple[int, float]:
        j = int(self.rng.choice([i for i in range(self.d) if i != self.target]))
        return j, float(self.rng.uniform(self.low, self.high))


def run_active_learning(scm: SCMSpec | str, config: EpisodeConfig = EpisodeConfig(),
                        surrogate: Surrogate | None = None, intervention_fn: Any = None,
                        seed: int = 0, base_seed: int = 0) -> dict:
    """Active structure learning on ``scm`` driven by ``intervention_fn``; seed-format result.

    Args:
      scm: an :class:`SCMSpec` or a fixed SCM name/JSON path.
      config: observational samples, interventions, surrogate settings.
      surrogate: a structure learner, or None for a fresh one from ``config.surrogate``.
      intervention_fn: ``observe(values, intervened)`` + ``() -> (variable_index, value)``;
        None means uniformly random interventions.
      seed, base_seed: the cell's seed (same data as the sweep's cell with these seeds).

    Returns:
      ``{"structure_learning_metrics": {"f1_scores", "shd_scores", "parent_f1_scores",
      "final_f1", "final_shd"}, "target_optimization": {...}, "interventions": [...]}``,
      metrics at every step (index 0 = after the observational data).
    """
    spec = resolve_scm(scm) if isinstance(scm, str) else scm
    if not isinstance(spec, SCMSpec):
        raise UserError("run_active_learning needs a fixed SCM (easy/medium/hard, JSON or SCMSpec)")
    scm_t, key = cell_scm_and_key(spec, base_seed, seed)
    d, n0, T = spec.d, config.n_observational, config.n_interventions
    lo, hi = spec.intervention_range
    sur = surrogate or make_surrogate(config.surrogate, d, config.capacity)
    fn = intervention_fn if intervention_fn is not None else _RandomFn(d, spec.target, lo, hi, seed)
    ks = cell_keys(key)
    x0 = sample_n(ks["obs"], scm_t, n0)
    update = jax.jit(sur.update)
    state = update(sur.init(ks["surrogate"], scm_t.var_mask), x0, jnp.zeros_like(x0, bool),
                   jnp.ones((n0,), bool))
    fn.observe(np.asarray(x0), np.zeros((n0, d), bool))
    eps = jax.random.normal(ks["noise"], (max(T, 1), d))
    step_fn = jax.jit(lambda e, m, v: propagate(scm_t, e, m, jnp.where(m, v, 0.0)))

    def record(probs):
        pred = M.posterior_graph(probs)
        g = M.structure_metrics(scm_t.adj, pred)
        p = M.parent_metrics(scm_t.adj, pred, scm_t.target)
        return float(g["f1"]), int(g["shd"]), float(p["parent_f1"])

    f1s, shds, pf1s = map(list, zip(record(sur.edge_probs(state))))
    target_values = [float(np.mean(np.asarray(x0)[:, spec.target]))]
    best = float(np.min(np.asarray(x0)[:, spec.target]))
    interventions = []
    for t in range(T):
        j, v = fn()
        if not (0 <= j < d) or j == spec.target:
            raise UserError(f"intervention function chose variable {j}: must be a non-target variable")
        v = float(np.clip(v, lo, hi))
        mask = jnp.arange(d) == j
        x = step_fn(eps[t], mask, jnp.float32(v))
        fn.observe(np.asarray(x)[None], np.asarray(mask)[None])
        state = update(state, x[None], mask[None], jnp.ones((1,), bool))
        f1, shd, pf1 = record(sur.edge_probs(state))
        f1s.append(f1), shds.append(shd), pf1s.append(pf1)
        tv = float(x[spec.target])
        target_values.append(tv)
        best = min(best, tv)
        interventions.append({"step": t + 1, "variable": spec.variables[j], "value": v})
    return {
        "scm": spec.name,
        "structure_learning_metrics": {"f1_scores": f1s, "shd_scores": shds,
                                       "parent_f1_scores": pf1s, "final_f1": f1s[-1],
                                       "final_shd": shds[-1]},
        "target_optimization": {"target_values": target_values,
                                "initial_target_value": target_values[0],
                                "final_best_target_value": best,
                                "improvement": target_values[0] - best},
        "interventions": interventions,
        "final_edge_probs": np.asarray(sur.edge_probs(state)),
    }
