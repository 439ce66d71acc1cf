"""The seed document's three-step Python workflow, working end to end::

    from causal_grpo.two_phase import (load_grpo_policy, create_grpo_intervention_fn,
                                       run_active_learning)
    from causal_grpo.active_learning import EpisodeConfig
    from causal_grpo.scm_families import medium

    scm = medium()
    loaded_policy = load_grpo_policy("grpo_runs/default/final")             # step 1
    intervention_fn = create_grpo_intervention_fn(                           # step 2
        loaded_policy=loaded_policy, scm=scm)   # values in the SCM's intervention range
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

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo.active_learning import EpisodeConfig, graph_metrics, observe, start_episode
from causal_grpo.checkpoint import LoadedPolicy, load_grpo_policy
from causal_grpo.errors import UserError
from causal_grpo.features import Buffer
from causal_grpo.options import INT_MAX, SEED_MAX, check_integer
from causal_grpo.policy import (LookaheadDraws, make_policy_selector, policy_output,
                                refit_posterior, resolve_lookahead_draws)
from causal_grpo.scm import MAX_ABS_VALUE, SCM, SCMSpec, propagate
from causal_grpo.scm_families import FamilyConfig, resolve_scm
from causal_grpo.surrogate import Surrogate, make_surrogate
from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate
from causal_grpo.sweep import cell_scm_and_key

__all__ = ["load_grpo_policy", "create_grpo_intervention_fn", "run_active_learning",
           "GRPOInterventionFn", "LoadedPolicy"]


class GRPOInterventionFn:
    """A trained policy with its own history, choosing interventions from data alone.

    It keeps every sample it is shown (``observe``) and its own DAG posterior of them; each
    call builds the Phase-2 observation from that history (surrogate features, never the true
    graph) and asks the jitted Phase-2 selector (``policy.make_policy_selector``) for
    ``(variable_index, value)``. Call t acts with key ``fold_in(key, t)``, as a sweep cell's
    selector does with its "select" key. Up to the exact posterior's size it then chooses as
    the sweep cell does; above it, its order-MCMC chains start from ``PRNGKey(seed)``, not
    from the cell's key, so it acts like the cell in distribution, not choice by choice.
    Create it with :func:`create_grpo_intervention_fn`.
    """

    def __init__(self, loaded: LoadedPolicy, d: int, target: int, names: tuple[str, ...],
                 intervention_range: tuple[float, float], capacity: int = 512, seed: int = 0,
                 greedy: bool = False, lookahead_draws: LookaheadDraws = "auto",
                 key: jax.Array | None = None, posterior: AnalyticConfig = AnalyticConfig()):
        if not isinstance(loaded, LoadedPolicy):
            hint = (": load it first, load_grpo_policy(path)"
                    if isinstance(loaded, (str, os.PathLike)) else "")
            raise UserError(f"loaded_policy must be what load_grpo_policy returns, got "
                            f"{type(loaded).__name__}{hint}")
        for name, value, low, high in (("seed", seed, 0, SEED_MAX),
                                       ("capacity", capacity, 1, INT_MAX)):
            check_integer(name, value, low, high)
        if not isinstance(greedy, (bool, np.bool_)):
            raise UserError(f"greedy must be True or False, got {greedy!r:.40}")
        if not isinstance(posterior, AnalyticConfig):
            raise UserError(f"posterior must be an AnalyticConfig, got {type(posterior).__name__}")
        pair = tuple(intervention_range) if isinstance(intervention_range, (tuple, list)) else ()
        if len(pair) != 2 or not all(isinstance(x, (int, float, np.integer, np.floating))
                                     and not isinstance(x, bool) for x in pair):
            raise UserError(f"intervention_range must be two numbers (low, high), got "
                            f"{intervention_range!r:.60}")
        if key is not None:
            try:
                jax.random.fold_in(key, 0)
            except (TypeError, ValueError):
                raise UserError("key must be one JAX PRNG key (jax.random.key(n) or "
                                f"PRNGKey(n)), got {type(key).__name__} of shape "
                                f"{getattr(key, 'shape', None)}") from None
        lo, hi = (float(x) for x in pair)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise UserError(f"intervention_range must be finite with low < high, got {intervention_range}")
        if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
            raise UserError(f"intervention_range {intervention_range} exceeds the float32-safe "
                            f"{MAX_ABS_VALUE:g}; rescale the variables")
        if not 0 <= target < d:
            raise UserError(f"target index {target} out of range for {d} variables")
        try:
            resolve_lookahead_draws(lookahead_draws, d)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.loaded, self.d, self.target, self.names = loaded, d, target, names
        self.low, self.high, self.capacity = lo, hi, capacity
        self._programs = _acting_programs(loaded.config, bool(greedy), lookahead_draws,
                                          posterior, d, capacity)
        self._shapes = SCM.without_graph(target, jnp.ones((d,), bool), lo, hi)
        self._state = self._programs.surrogate.init(jax.random.PRNGKey(seed),
                                                    jnp.ones((d,), bool))
        self._buffer = Buffer.empty(capacity, d)
        self._count = 0
        self._key = jax.random.PRNGKey(seed) if key is None else key
        self._calls = 0
        self.history: list[dict] = []

    def observe(self, values, intervened=None) -> None:
        """Add samples: values (n, d) or (d,); intervened the same shape (bool) or None."""
        x = np.atleast_2d(np.asarray(values, np.float32))
        if x.shape[1] != self.d or not np.all(np.isfinite(x)):
            raise UserError(f"observe() needs finite values of shape (n, {self.d}), got {np.shape(values)}")
        if np.abs(x).max(initial=0.0) > MAX_ABS_VALUE:
            # The posterior's statistics hold squares of values (NaN actions came of 1e20).
            raise UserError(f"observe() got a value of magnitude {np.abs(x).max():.3g}, above the "
                            f"float32-safe {MAX_ABS_VALUE:g}; rescale the variables")
        m = np.zeros_like(x, bool) if intervened is None else np.atleast_2d(np.asarray(intervened, bool))
        if m.shape != x.shape:
            raise UserError(f"intervened mask shape {m.shape} does not match values {x.shape}")
        n = x.shape[0]
        if self._count + n > self.capacity:
            raise UserError(f"history is full ({self.capacity} rows); create the function with a "
                            "larger capacity")
        rows = slice(self._count, self._count + n)
        self._buffer = Buffer(self._buffer.values.at[rows].set(x),
                              self._buffer.intervened.at[rows].set(m),
                              self._buffer.valid.at[rows].set(True))
        self._count += n
        self._state = self._programs.update(self._state, jnp.asarray(x), jnp.asarray(m),
                                            jnp.ones((n,), bool))
        for row, mask in zip(x, m):
            self.history.append({"values": row, "intervened": mask})

    @property
    def rows_seen(self) -> int:
        """Rows observed so far (the history one episode builds)."""
        return self._count

    def _args(self) -> tuple:
        if self._count == 0:
            raise UserError("the intervention function has seen no data yet; call observe() first")
        return (jax.random.fold_in(self._key, self._calls), self.loaded.params, self._shapes,
                self._buffer, self._state, jnp.asarray(self._calls))

    def action_distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """(d,) variable probabilities and (d, n_bins) value-bin probabilities of the next call."""
        pv, pb = self._programs.dist(*self._args())
        return np.asarray(pv), np.asarray(pb)

    def __call__(self) -> tuple[int, float]:
        """The next intervention ``(variable_index, value)`` chosen from the history."""
        action = self._programs.select(*self._args())
        self._calls += 1
        return int(action.variable), float(action.value)


class _ActingPrograms(NamedTuple):
    surrogate: Surrogate
    obs: Any           # (shapes, buffer, state, step) -> Observation, unjitted
    update: Any        # jit(surrogate.update)
    select: Any        # jit: (key, params, shapes, buffer, state, step) -> Action
    dist: Any          # jit: the same arguments -> (variable probs, value-bin probs)


# Built once per policy architecture, acting settings, size and history capacity, so that a
# new function for each episode (as the workflow asks) reuses the compiled programs: compiling
# them took about 9 of the 11 s of a `medium` episode. The SCM's target and range are
# arguments, not constants. Few are kept: XLA's CPU code for one lookahead program holds
# thousands of memory mappings (causal_grpo.sweep.MAX_PROGRAMS), and the capacity is in the key
# so that functions of many capacities do not pile programs onto one entry.
@functools.lru_cache(maxsize=4)
def _acting_programs(config, greedy: bool, lookahead_draws: LookaheadDraws,
                     posterior: AnalyticConfig, d: int, capacity: int) -> _ActingPrograms:
    sur = make_analytic_surrogate(posterior, d)
    # The lookahead refits this function's own posterior settings, as the sweep's selector
    # refits the episode's.
    select = make_policy_selector(config, greedy, lookahead_draws, posterior)

    def obs(shapes, buffer, state, step):
        return observe(shapes, buffer, step, sur.edge_probs(state))

    def dist(key, params, shapes, buffer, state, step):
        o = obs(shapes, buffer, state, step)
        refit = refit_posterior(key, o, posterior) if config.lookahead else None
        out = policy_output(key, o, params, config, refit, lookahead_draws)[1]
        return jax.nn.softmax(out.var_logits), jax.nn.softmax(out.value_logits, axis=-1)

    return _ActingPrograms(
        sur, obs, jax.jit(sur.update),
        jax.jit(lambda key, params, shapes, buffer, state, step:
                select(key, obs(shapes, buffer, state, step), params)),
        jax.jit(dist))


def create_grpo_intervention_fn(loaded_policy: LoadedPolicy, scm: SCMSpec | SCM | str,
                                intervention_range: tuple[float, float] | None = None,
                                seed: int = 0, greedy: bool = False,
                                capacity: int = 512,
                                lookahead_draws: LookaheadDraws = "auto",
                                key: jax.Array | None = None,
                                posterior: AnalyticConfig = AnalyticConfig()
                                ) -> GRPOInterventionFn:
    """The seed document's step 2: a stateful intervention function for ``scm``.

    Only the SCM's size, target, names and intervention range are used, never its graph: the
    function learns what it needs from the data it is shown. ``intervention_range``: the
    values the policy's bins span (default: the SCM's own, which ``run_active_learning``
    clips to); ``lookahead_draws``: as for ``policy.policy_handle``; ``key``: the acting key
    stream (default ``PRNGKey(seed)``); ``posterior``: the function's own DAG posterior, best
    the episode's (``EpisodeConfig.surrogate.analytic``; the dense protocol scores every
    parent set).
    """
    if isinstance(scm, str):
        scm = resolve_scm(scm)
    if isinstance(scm, SCMSpec):
        d, target, names = scm.d, scm.target, scm.variables
        own = scm.intervention_range
    elif isinstance(scm, SCM):
        mask = np.asarray(scm.var_mask)
        if not mask.all():
            raise UserError("create_grpo_intervention_fn needs an unpadded SCM")
        d, target = scm.d, int(scm.target)
        names = tuple(f"X{i}" for i in range(d))
        own = (float(scm.low), float(scm.high))
    else:
        raise UserError("create_grpo_intervention_fn needs a fixed SCM (easy/medium/hard, a JSON "
                        f"path, an SCMSpec or an SCM), got {type(scm).__name__}"
                        + (" (a family of random graphs)" if isinstance(scm, FamilyConfig) else ""))
    return GRPOInterventionFn(loaded_policy, d, target, names,
                              own if intervention_range is None else intervention_range,
                              capacity=capacity, seed=seed, greedy=greedy,
                              lookahead_draws=lookahead_draws, key=key, posterior=posterior)


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


# One surrogate and one set of compiled episode programs per setting, reused across episodes
# (compiling them was about 3.5 of the 4 s of a `medium` episode); the SCM is an argument.
_fresh_surrogate = functools.lru_cache(maxsize=4)(make_surrogate)


@functools.lru_cache(maxsize=4)
def _episode_programs(sur: Surrogate, n0: int, capacity: int, T: int) -> tuple:
    return (jax.jit(lambda k, s: start_episode(k, s, sur, n0, capacity, T)),
            jax.jit(sur.update),
            jax.jit(lambda s, e, m, v: propagate(s, e, m, jnp.where(m, v, 0.0))))


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
    for name, value in (("seed", seed), ("base_seed", base_seed)):
        check_integer(name, value, 0, SEED_MAX)
    if not isinstance(config, EpisodeConfig):
        raise UserError(f"config must be an EpisodeConfig, got {type(config).__name__}")
    if surrogate is not None and not isinstance(surrogate, Surrogate):
        raise UserError(f"surrogate must be a Surrogate (make_surrogate builds one) or None, got "
                        f"{type(surrogate).__name__}")
    if intervention_fn is not None and not (
            callable(intervention_fn) and callable(getattr(intervention_fn, "observe", None))):
        raise UserError("intervention_fn must have observe(values, intervened) and return "
                        "(variable, value) when called (create_grpo_intervention_fn makes one), "
                        f"got {type(intervention_fn).__name__}")
    if getattr(intervention_fn, "rows_seen", 0):
        raise UserError(f"the intervention function already holds {intervention_fn.rows_seen} "
                        "rows of another episode; create a new one for each episode")
    spec = resolve_scm(scm) if isinstance(scm, str) else scm
    if not isinstance(spec, SCMSpec):
        raise UserError("run_active_learning needs a fixed SCM (easy/medium/hard, JSON or SCMSpec)")
    scm_t, key = cell_scm_and_key(spec, base_seed, seed)
    d, n0, T = spec.d, config.n_observational, config.n_interventions
    lo, hi = spec.intervention_range
    sur = surrogate or _fresh_surrogate(config.surrogate, d, config.capacity)
    if sur.capacity is not None and sur.capacity < config.capacity:
        raise UserError(f"the surrogate keeps {sur.capacity} rows and the episode has "
                        f"{config.capacity} ({n0} observational + {T} interventions): build it "
                        f"with capacity >= {config.capacity}")
    fn = intervention_fn if intervention_fn is not None else _RandomFn(d, spec.target, lo, hi, seed)
    # Checked before any compute: a function's history that fills up mid-episode, or one made
    # for another SCM, would otherwise fail only after steps of work.
    if getattr(fn, "capacity", None) is not None and fn.capacity < config.capacity:
        raise UserError(f"the intervention function keeps {fn.capacity} rows and the episode has "
                        f"{config.capacity} ({n0} observational + {T} interventions): create it "
                        f"with capacity >= {config.capacity}")
    made_for = getattr(fn, "d", d), getattr(fn, "target", spec.target)
    if made_for != (d, spec.target):
        raise UserError(f"the intervention function was made for an SCM of {made_for[0]} "
                        f"variables with target {made_for[1]}; this one has {d} with target "
                        f"{spec.target}")
    try:
        start_fn, update, step_fn = _episode_programs(sur, n0, config.capacity, T)
    except TypeError:       # a surrogate of unhashable callables: its programs are not kept
        start_fn, update, step_fn = _episode_programs.__wrapped__(sur, n0, config.capacity, T)
    start = start_fn(key, scm_t)
    x0, state, eps = start.x0, start.state, start.eps
    fn.observe(np.asarray(x0), np.zeros((n0, d), bool))

    def record(probs):
        m = graph_metrics(scm_t, probs)
        return float(m["f1"]), int(m["shd"]), float(m["parent_f1"])

    f1s, shds, pf1s = map(list, zip(record(sur.edge_probs(state))))
    target_values = [float(np.mean(np.asarray(x0)[:, spec.target]))]
    best = float(np.min(np.asarray(x0)[:, spec.target]))
    interventions = []
    for t in range(T):
        choice = fn()
        if not isinstance(choice, (tuple, list)) or len(choice) != 2:
            raise UserError(f"intervention function returned {choice!r:.40}: must be "
                            "(variable index, value)")
        j, v = choice
        if (isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < d
                or j == spec.target):
            raise UserError(f"intervention function chose variable {j!r}: must be the index "
                            "of a non-target variable")
        if not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
            raise UserError(f"intervention function chose value {v!r}: must be a finite number")
        v = float(np.clip(v, lo, hi))
        mask = jnp.arange(d) == j
        x = step_fn(scm_t, eps[t], mask, jnp.float32(v))
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
