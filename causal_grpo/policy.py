"""The policy acting: one function builds its input and samples, in both phases.

:func:`act` is the only way the policy acts on an :class:`~causal_grpo.active_learning.Observation`:
Phase-1 rollouts vmap it over the G candidates of a state (the input is computed once, only
the sampling key is batched), the Phase-2 selector (:func:`make_policy_selector`) calls it once
per decision, and the seed API's stateful function (``two_phase.GRPOInterventionFn``) calls
that selector. So the states the loss sees are exactly the states the policy acted on.

With ``PolicyConfig.lookahead`` the input also carries :func:`lookahead_features`: a one-step,
data-only lookahead the network cannot compute itself (docs/EXPERIMENTS.md, "How much is there
to gain?").

:class:`PolicyHandle` carries a loaded policy to the sweep (``policy_handle``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from causal_grpo.active_learning import (Action, Observation, Selector, allowed_variables,
                                         lookahead_gains, lookahead_key, plugin_simulator,
                                         refit_key)
from causal_grpo.errors import UserError
from causal_grpo.networks import (PolicyConfig, PolicyInput, PolicyOutput, bin_values, make_policy,
                                  sample_action)
from causal_grpo.scm import SCM
from causal_grpo.surrogate import Surrogate
from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate

if TYPE_CHECKING:
    from causal_grpo.checkpoint import LoadedPolicy

Array = jax.Array
LookaheadDraws = Union[int, str]   # a positive int, or "auto" (see auto_lookahead_draws)

# Acting-time lookahead budget (docs/EXPERIMENTS.md, "Lookahead draws when acting"): what 8
# draws cost at d = 10, i.e. 8 x 2d updates of a 10-variable exact posterior. An update's work
# grows as d^2 2^d (the DP's subset transforms), so the budget buys 8 draws up to d = 10, 3 at
# d = 11 and 1 from d = 12 on (on 2 CPU cores one update is 0.1 ms at d = 10, 6 ms at d = 15).
AUTO_DRAWS_MAX = 8
AUTO_DRAWS_REF_D = 10


def auto_lookahead_draws(d: int) -> int:
    """Draws per candidate that fit the acting-time budget at padded size ``d`` (1 to 8)."""
    def work(n: int) -> int:
        return 2 * n * n * 2 ** n
    return max(1, min(AUTO_DRAWS_MAX, AUTO_DRAWS_MAX * work(AUTO_DRAWS_REF_D) // work(d)))


def resolve_lookahead_draws(draws: LookaheadDraws, d: int) -> int:
    """``draws`` as a number for ``d`` variables; ValueError for anything but >= 1 or "auto"."""
    if draws == "auto":
        return auto_lookahead_draws(d)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"lookahead draws must be a positive integer or 'auto', got {draws!r}")
    return draws


def lookahead_features(key: Array, obs: Observation, surrogate: Surrogate, state: Any,
                       draws: int = 1) -> Array:
    """(d, 2): each variable's one-step plug-in gain at the low and the high end of the range.

    ``draws`` outcomes per candidate (1 in training; more when acting makes the input less
    noisy, docs/EXPERIMENTS.md) are simulated from the linear SCM fitted to
    the data on the point estimate of ``obs.probs`` (the features' graph: the posterior's, or
    the bootstrap graph for ``grpo_bootstrap``), ``surrogate`` is updated from ``state`` with
    each, and the gain is the mean drop in expected SHD against that point estimate
    (``active_learning.lookahead_gains``).
    Gains are z-scored over the candidates computed (0 for the target and padding), so the
    scale is the same at every state. Cost: 2 (d - 1) ``draws`` posterior updates; above the
    exact posterior's size, 2 m ``draws`` what-if updates of a shortlist of m variables
    (``active_learning.shortlist``), and the other variables get the shortlist's lowest
    z-score, so the lookahead speaks only for the shortlist. Reads nothing true beyond
    ``obs.probs``: a bootstrap graph is the true one plus noise that fades over the episode.
    """
    shapes = SCM.without_graph(obs.target, obs.var_mask, obs.low, obs.high)
    sim, shift, ref = plugin_simulator(obs.probs, obs.buffer, shapes)
    g = lookahead_gains(key, obs, surrogate, state, sim, shift, ref, draws,
                        jnp.stack([obs.low, obs.high]))
    ok = jnp.isfinite(g)
    n = jnp.maximum(ok.sum(), 1)
    g0 = jnp.where(ok, g, 0.0)
    mean = g0.sum() / n
    std = jnp.sqrt(jnp.where(ok, (g0 - mean) ** 2, 0.0).sum() / n)
    z = jnp.where(ok & (std > 1e-9), (g0 - mean) / jnp.maximum(std, 1e-9), 0.0)
    low = jnp.min(jnp.where(ok, z, jnp.inf))
    unlisted = allowed_variables(obs)[:, None] & ~ok
    return jnp.where(unlisted, jnp.where(jnp.isfinite(low), low, 0.0), z)


def policy_input(obs: Observation, lookahead: Array | None = None) -> PolicyInput:
    feats = obs.features if lookahead is None else jnp.concatenate([obs.features, lookahead], -1)
    return PolicyInput(obs.buffer.values, obs.buffer.intervened, obs.buffer.valid, feats,
                       obs.target, obs.var_mask, obs.probs)


def refit_posterior(key: Array, obs: Observation,
                    analytic: AnalyticConfig | None = None) -> tuple[Surrogate, Any]:
    """The posterior of ``obs.buffer`` under ``analytic`` (default ``AnalyticConfig()``; what a
    selector that sees only the observation uses for the lookahead), initialised from
    ``refit_key(key)``: the exact one up to exact_max_d, above it order MCMC, of which the
    lookahead's what-if posterior reads only the statistics and candidates
    (``active_learning.lookahead_gains``)."""
    sur = make_analytic_surrogate(analytic or AnalyticConfig(), obs.var_mask.shape[-1])
    buf = obs.buffer
    return sur, sur.update(sur.init(refit_key(key), obs.var_mask), buf.values, buf.intervened,
                           buf.valid)


def policy_output(key: Array, obs: Observation, params: Any, cfg: PolicyConfig,
                  posterior: tuple[Surrogate, Any] | None = None,
                  lookahead_draws: LookaheadDraws = 1) -> tuple[PolicyInput, PolicyOutput]:
    """The network's input for ``obs`` and its output.

    With ``cfg.lookahead`` the input carries :func:`lookahead_features` (key
    ``lookahead_key(key)``, ``lookahead_draws`` outcomes per candidate, "auto" resolved from the
    padded d) computed from ``posterior`` = (surrogate, state of ``obs.buffer``), refitted here
    when None.
    """
    extra = None
    if cfg.lookahead:
        sur, state = posterior if posterior is not None else refit_posterior(key, obs)
        draws = resolve_lookahead_draws(lookahead_draws, obs.var_mask.shape[-1])
        extra = lookahead_features(lookahead_key(key), obs, sur, state, draws)
    inp = policy_input(obs, extra)
    return inp, make_policy(cfg).apply(params, None, inp)


# The action's own random stream under a selector's key. Under JAX's partitionable threefry
# split(key, n)[i] is fold_in(key, i): sampling with the key itself split it, and its value
# bin's noise was the lookahead's simulated outcomes (lookahead_key: fold_in(key, 1)).
SAMPLE_STREAM = 0x53414D50


def act(key: Array, obs: Observation, params: Any, cfg: PolicyConfig,
        posterior: tuple[Surrogate, Any] | None = None, lookahead_draws: LookaheadDraws = 1,
        greedy: bool = False, sample_key: Array | None = None
        ) -> tuple[PolicyInput, Array, Array, Array]:
    """One decision: ``(input, variable, value_bin, log_prob)``.

    ``key`` sets the input (:func:`policy_output`); ``sample_key`` (default: a stream of
    ``key``'s own, :data:`SAMPLE_STREAM`) draws the action. Vmapped over ``sample_key`` alone,
    the input and the network run once per state.
    """
    inp, out = policy_output(key, obs, params, cfg, posterior, lookahead_draws)
    if sample_key is None:
        sample_key = jax.random.fold_in(key, SAMPLE_STREAM)
    j, b, lp = sample_action(sample_key, out, greedy)
    return inp, j, b, lp


def make_policy_selector(cfg: PolicyConfig, greedy: bool = False,
                         lookahead_draws: LookaheadDraws = 1,
                         analytic: AnalyticConfig | None = None) -> Selector:
    """A pure selector ``(key, obs, params) -> Action`` that samples (or takes the mode of) pi
    through :func:`act`; the lookahead refits the posterior to ``obs.buffer`` (the selector
    sees only the observation, :func:`refit_posterior`) under ``analytic``, the episode's
    posterior settings (e.g. every parent set on ``dense<d>``), as Phase 1 trained it."""
    resolve_lookahead_draws(lookahead_draws, 2)   # refuse a bad value now, not inside jit

    def select(key: Array, obs: Observation, params: Any) -> Action:
        posterior = refit_posterior(key, obs, analytic) if cfg.lookahead else None
        _, j, b, lp = act(key, obs, params, cfg, posterior, lookahead_draws, greedy)
        v = bin_values(obs.low, obs.high, cfg.n_bins)[b]
        return Action(j.astype(jnp.int32), v.astype(jnp.float32), lp, jnp.asarray(True))

    return select


class PolicyHandle(NamedTuple):
    """A learned selector for the ``grpo_*`` methods.

    selector: pure selector fn; params: its weights; digest: content digest (cache/resume key);
    config: the architecture (``networks.PolicyConfig``), greedy flag and lookahead draws,
    from which a remote process rebuilds the selector (plain data travels, closures don't).
    """

    selector: Callable
    params: Any
    digest: str
    config: Any = None
    greedy: bool = False
    lookahead_draws: LookaheadDraws = 1


def episode_selector(policy: PolicyHandle, analytic: AnalyticConfig | None) -> Callable:
    """The policy's selector for an episode whose posterior has the settings ``analytic``
    (in-degree, score): its lookahead refits under them, as Phase 1 trained it (the handle's
    own selector refits under the defaults). A handle without an architecture is a plain
    selector, returned as is."""
    if policy.config is None:
        return policy.selector
    return make_policy_selector(policy.config, policy.greedy, policy.lookahead_draws, analytic)


def policy_handle(loaded: "LoadedPolicy", greedy: bool = False,
                  lookahead_draws: LookaheadDraws = "auto") -> PolicyHandle:
    """A loaded policy as the pure selector of the jitted Phase-2 loop (``lookahead_draws``:
    outcomes per candidate in its lookahead input, a number or "auto" (the acting-time budget,
    :func:`auto_lookahead_draws`); part of the digest, so of the cache key)."""
    try:
        resolve_lookahead_draws(lookahead_draws, 2)
    except ValueError as e:
        raise UserError(str(e)) from None
    draws = lookahead_draws if loaded.config.lookahead else 1
    digest = loaded.digest + ("-greedy" if greedy else "") + (f"-la{draws}" if draws != 1 else "")
    return PolicyHandle(make_policy_selector(loaded.config, greedy, draws), loaded.params,
                        digest, loaded.config, greedy, draws)
