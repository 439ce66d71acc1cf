"""Phase 1: GRPO training of the intervention policy on a curriculum of random SCMs.

One iteration:

1. ``episodes_per_iter`` SCMs are drawn from the current curriculum stage (mixed ER /
   scale-free / chain / fork / collider graphs; sizes drawn from the stage's list, padded to
   one size per stage). ``easy``/``medium``/``hard`` are never drawn: they stay held out.
2. Each episode starts from ``n_observational`` samples and an exact DAG posterior. At each of
   ``steps_per_episode`` steps the policy sees its observation (the data buffer and, per
   episode at random, bootstrap or posterior features), and G candidates are sampled from it
   with their log-probabilities (``policy.act``: one input, G sampling keys).
   Every candidate is executed on the simulator from that same state with the *same*
   exogenous noise (common random numbers: differences within a group come from the action
   alone), the posterior is updated with each outcome, and each candidate's reward is the drop
   in expected SHD (plus the optional target term). The episode advances with candidate 0,
   itself a draw from the policy, so states stay on-policy.
3. Group-normalised advantages and the clipped GRPO loss update the policy
   (``causal_grpo.grpo.update``), on exactly the recorded inputs and log-probabilities.

Every episode's randomness is ``fold_in(fold_in(key, iteration), episode)``, so splitting the
episodes of an iteration across processes (``cluster/``) reproduces the same batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo import grpo
from causal_grpo.active_learning import (EpisodeConfig, Method, make_batch_runner, method_id,
                                         observe, start_episode)
from causal_grpo.features import BootstrapConfig, bootstrap_noise, bootstrap_probs
from causal_grpo.metrics import expected_shd
from causal_grpo.networks import PolicyConfig, bin_values, make_policy
from causal_grpo.options import MISSING, check_options, differences, option
from causal_grpo.policy import SAMPLE_STREAM, act, make_policy_selector
from causal_grpo.results import f1_auc, paired_stats
from causal_grpo.rewards import RewardConfig, structure_reward, target_reward, total_reward
from causal_grpo.scm import SCM, propagate
from causal_grpo.scm_families import (PROTOCOLS, GraphKind, family_config, resolve_scm,
                                      sample_family)
from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate
from causal_grpo.surrogate import SurrogateConfig
from causal_grpo.sweep import cell_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Stage:
    """A curriculum stage: SCM sizes drawn uniformly from ``sizes``, padded to ``d_pad``.

    ``episodes`` per iteration may be smaller for large graphs, whose exact posterior costs
    far more per candidate (about 0.1 ms at d = 10, 0.4 ms at 12, 6 ms at 15 on 2 CPU cores).
    """

    sizes: tuple[int, ...]
    d_pad: int
    iterations: int
    episodes: int = 16


# Sized for the 15-minute budget on 2 CPU cores with the lookahead input (2 d more posterior
# updates per decision; docs/BENCHMARKS.md); with the batch-last DP it takes about
# 6.5 minutes. Starting from the lookahead prior the policy needs far fewer iterations than
# the 386 the plain network took.
DEFAULT_CURRICULUM = (
    Stage(sizes=(3, 4, 5, 6), d_pad=6, iterations=40),
    Stage(sizes=(6, 7, 8, 9, 10), d_pad=10, iterations=150),
    Stage(sizes=(11, 12), d_pad=12, iterations=16),
    Stage(sizes=(13, 14, 15), d_pad=15, iterations=3, episodes=4),
)


def curriculum_for(max_variables: int = 15, episodes: int | None = None) -> tuple[Stage, ...]:
    """The default curriculum cut at ``max_variables``, its iterations scaled so that about
    ``episodes`` training episodes run in all (None: unscaled)."""
    from causal_grpo.errors import UserError
    stages = []
    for s in DEFAULT_CURRICULUM:
        sizes = tuple(x for x in s.sizes if x <= max_variables)
        if sizes:
            stages.append(Stage(sizes, max(sizes), s.iterations, s.episodes))
    if not stages:
        raise UserError(f"no curriculum stage has SCMs of at most {max_variables} variables")
    if episodes is not None:
        scale = episodes / sum(s.iterations * s.episodes for s in stages)
        stages = [dataclasses.replace(s, iterations=max(1, round(s.iterations * scale)))
                  for s in stages]
    return tuple(stages)


def with_family_protocol(cfg: "Phase1Config", max_variables: int, episodes: int | None,
                         given: frozenset[str] = frozenset()) -> "Phase1Config":
    """``cfg`` trained in its family's own protocol, where the family has one (``dense``: 50
    observational samples, 10 interventions in [-1, 1], every parent set scored, so SCMs of
    at most 10 variables), with the held-out check on the same family at d = 8. Fields named
    in ``given`` (``n_observational``, ``steps_per_episode``, ``max_variables``) were set by
    the user and are kept; a given ``max_variables`` beyond the protocol is refused."""
    from causal_grpo.errors import UserError
    proto = PROTOCOLS.get(cfg.graph_kind)
    if proto is None:
        return dataclasses.replace(cfg, curriculum=curriculum_for(max_variables, episodes))
    top = proto.all_parent_sets_max_d
    if "max_variables" in given and max_variables > top:
        raise UserError(f"--scm-family {cfg.graph_kind.value} trains on at most {top} variables "
                        f"(its protocol scores every parent set), got --max-variables {max_variables}")
    return dataclasses.replace(
        cfg, curriculum=curriculum_for(min(max_variables, top), episodes),
        n_observational=(cfg.n_observational if "n_observational" in given
                         else proto.n_observational),
        steps_per_episode=(cfg.steps_per_episode if "steps_per_episode" in given
                           else proto.n_interventions),
        surrogate=dataclasses.replace(cfg.surrogate, max_indegree=top - 1),
        eval_scm=f"{cfg.graph_kind.value}8")


@dataclasses.dataclass(frozen=True)
class Phase1Config:
    """Everything that defines a Phase-1 run (saved in every checkpoint's config.json)."""

    curriculum: tuple[Stage, ...] = DEFAULT_CURRICULUM
    graph_kind: GraphKind = option(GraphKind.MIXED, "--scm-family", "graph shapes of the "
                                   "training SCMs")
    expected_degree: tuple[float, float] = (1.5, 3.0)
    # Wide on purpose: weak edges under large noise and strong edges under tiny noise both
    # occur in practice (the held-out `hard` and `medium` SCMs sit at either end).
    weight_range: tuple[float, float] = (0.25, 2.0)
    noise_range: tuple[float, float] = (0.1, 2.0)
    steps_per_episode: int = option(10, "--steps-per-episode", "interventions per training "
                                    "episode", low=1, high=200)
    n_observational: int = option(30, "--n-observational", "observational samples that start "
                                  "each episode", low=2, high=10_000)
    policy: PolicyConfig = PolicyConfig()
    grpo: grpo.GRPOConfig = grpo.GRPOConfig()
    reward: RewardConfig = RewardConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    surrogate: AnalyticConfig = AnalyticConfig()
    eval_every: int = option(20, "--eval-every", "iterations between held-out checks (0 = none)",
                             low=0, high=1_000_000)
    eval_scm: str = "er8"
    eval_seeds: int = 32
    eval_steps: int = 10
    checkpoint_every: int = option(50, "--checkpoint-every", "iterations between checkpoints "
                                   "(0 = only final/)", low=0, high=1_000_000)
    # XLA's vectorised sums depend on how many episodes one call vmaps, so the chunk, not the
    # number of Ray workers, fixes the numbers: workers take whole chunks.
    rollout_chunk: int = option(4, "--rollout-chunk", "episodes per compiled rollout call (Ray "
                                "workers take whole chunks: the same numbers for any "
                                "--num-workers)", low=1, high=1024)
    seed: int = option(0, "--seed", "training seed", low=0, high=2**31 - 1)

    @property
    def iterations(self) -> int:
        return sum(s.iterations for s in self.curriculum)

    def stage_of(self, iteration: int) -> int:
        total = 0
        for i, s in enumerate(self.curriculum):
            total += s.iterations
            if iteration < total:
                return i
        return len(self.curriculum) - 1

    def validate(self) -> None:
        from causal_grpo.errors import UserError
        if not self.curriculum:
            raise UserError("the curriculum needs at least one stage")
        for s in self.curriculum:
            if not s.sizes or min(s.sizes) < 3 or max(s.sizes) > s.d_pad or s.d_pad > 16:
                raise UserError(f"bad curriculum stage {s}: sizes must be in 3..d_pad, d_pad <= 16")
        check_options(self)
        for name in ("structure_weight", "target_weight"):
            if not math.isfinite(getattr(self.reward, name)):
                raise UserError(f"reward {name} must be finite")
        if self.reward.structure_weight == 0 and self.reward.target_weight == 0:
            raise UserError("at least one reward weight must be non-zero")


# --------------------------------------------------------------------------- SCM curriculum

def sample_stage_scm(key: Array, stage: Stage, cfg: Phase1Config) -> SCM:
    """One SCM of the stage: size uniform over ``stage.sizes``, padded to ``stage.d_pad``."""
    k_size, k_scm = jax.random.split(key)
    fams = [family_config(cfg.graph_kind, d, stage.d_pad, expected_degree=cfg.expected_degree,
                          weight_range=cfg.weight_range, noise_range=cfg.noise_range)
            for d in stage.sizes]
    idx = jax.random.randint(k_size, (), 0, len(fams))
    return jax.lax.switch(idx, [lambda k, f=f: sample_family(k, f) for f in fams], k_scm)


def episode_key(key: Array, iteration: int, episode: int | Array) -> Array:
    return jax.random.fold_in(jax.random.fold_in(key, iteration), episode)


# --------------------------------------------------------------------------- rollouts

class EpisodeData(NamedTuple):
    """What one episode contributes, per step (T, ...) and per candidate (T, G)."""

    batch: grpo.Batch
    rewards: Array
    structure: Array
    target: Array
    info: dict


def candidate_keys(select_key: Array, group_size: int) -> Array:
    """The G candidates' sampling keys at one state: a stream of ``select_key``'s own, as
    :func:`policy.act` samples, since ``select_key`` also sets the lookahead's outcomes
    (``split(select_key, G)[1]`` is its ``lookahead_key``)."""
    return jax.random.split(jax.random.fold_in(select_key, SAMPLE_STREAM), group_size)


def rollout_episode(key: Array, params: Any, cfg: Phase1Config, stage: Stage) -> EpisodeData:
    """One Phase-1 episode with G candidates per step (jittable; vmap over keys)."""
    sur = make_analytic_surrogate(cfg.surrogate, stage.d_pad)
    k_scm, k_src, k_ep = jax.random.split(key, 3)
    scm = sample_stage_scm(k_scm, stage, cfg)
    # Each episode draws bootstrap (true graph + decaying noise) or surrogate (the exact
    # posterior's) features with probability 1/2 (docs: "Why mixed features").
    use_boot = jax.random.bernoulli(k_src, 0.5)

    d, n0, T, G = stage.d_pad, cfg.n_observational, cfg.steps_per_episode, cfg.grpo.group_size
    K = cfg.policy.n_bins
    ks, x0, buffer, state, eps = start_episode(k_ep, scm, sur, n0, n0 + T, T)
    noise_b = bootstrap_noise(ks["bootstrap"], d)
    t_mean, t_std = jnp.mean(x0[:, scm.target]), jnp.std(x0[:, scm.target])
    values_of_bins = bin_values(scm.low, scm.high, K)
    out_deg = scm.adj.sum(1)

    def step(carry, t):
        state, buffer = carry
        probs = sur.edge_probs(state)
        fprobs = jnp.where(use_boot, bootstrap_probs(scm.adj, noise_b, t, cfg.bootstrap), probs)
        obs = observe(scm, buffer, t, fprobs)
        k_select = jax.random.fold_in(ks["select"], t)
        # The G candidates: one input (the lookahead from the running posterior), G samples.
        inp, var, vbin, logp = jax.vmap(
            lambda k: act(k_select, obs, params, cfg.policy, (sur, state), sample_key=k),
            out_axes=(None, 0, 0, 0))(candidate_keys(k_select, G))
        vals = values_of_bins[vbin]
        masks = jax.nn.one_hot(var, d, dtype=bool)

        # Every candidate of the group under the same exogenous noise (common random numbers).
        xs = jax.vmap(lambda m, v: propagate(scm, eps[t], m, jnp.where(m, v, 0.0)))(masks, vals)
        new = jax.vmap(lambda x, m: sur.update(state, x[None], m[None], jnp.ones((1,), bool)))(
            xs, masks)
        r_struct = jax.vmap(lambda s: structure_reward(scm.adj, probs, sur.edge_probs(s),
                                                       scm.var_mask))(new)
        r_target = target_reward(xs[:, scm.target], t_mean, t_std)
        r = total_reward(cfg.reward, r_struct, r_target)
        adv = grpo.group_advantages(r)
        # The episode goes on with candidate 0's outcome, itself a draw from pi.
        state = jax.tree.map(lambda a: a[0], new)
        buffer = buffer.write(n0 + t, xs[0], masks[0])
        info = {
            "is_target_parent": scm.adj[var, scm.target].mean(),
            "chosen_out_degree": out_deg[var].mean(),
            "mean_out_degree": jnp.sum(out_deg * scm.var_mask) / jnp.sum(scm.var_mask),
            "value_at_extreme": ((vbin == 0) | (vbin == K - 1)).mean(),
            "abs_value": jnp.abs(vals).mean(),
            "all_equal": (r.std() <= 1e-6).astype(jnp.float32),
            "expected_shd": expected_shd(scm.adj, probs, scm.var_mask),
            "d": jnp.sum(scm.var_mask).astype(jnp.float32),
        }
        return (state, buffer), (inp, var, vbin, logp, adv, r, r_struct, r_target, info)

    _, (inp, var, vbin, logp, adv, r, rs, rt, info) = jax.lax.scan(
        step, (state, buffer), jnp.arange(T))
    return EpisodeData(grpo.Batch(inp, var, vbin, logp, adv), r, rs, rt, info)


def make_collect(cfg: Phase1Config, stage: Stage) -> Callable:
    """jit(vmap) over episodes: ``(params, keys (E,)) -> (Batch with N = E*T, stats)``."""

    def collect(params, keys):
        data = jax.vmap(lambda k: rollout_episode(k, params, cfg, stage))(keys)
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), data.batch)
        stats = {"reward": data.rewards.mean(), "reward_structure": data.structure.mean(),
                 "reward_target": data.target.mean()}
        stats |= {k: v.mean() for k, v in data.info.items()}
        return flat, stats

    return jax.jit(collect)


def episode_chunks(keys: Array, chunk: int) -> list[Array]:
    """An iteration's episode keys in consecutive chunks of ``chunk`` (the last may be
    shorter): the unit of one compiled rollout call, in-process and on a Ray worker alike."""
    return [keys[i:i + chunk] for i in range(0, len(keys), chunk)]


def concat_batches(parts: Sequence[grpo.Batch]) -> grpo.Batch:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def merge_stats(parts: Sequence[dict], weights: Sequence[int]) -> dict:
    w = np.asarray(weights, float) / np.sum(weights)
    return {k: float(sum(wi * float(p[k]) for wi, p in zip(w, parts))) for k in parts[0]}


# --------------------------------------------------------------------------- evaluation

class Evaluator:
    """Held-out Phase-2 check: the policy on *surrogate* features vs random, paired seeds.

    Uses held-out draws of ``cfg.eval_scm`` (seeds far from anything Phase 1 draws) and
    reports mean F1-AUC over the first ``eval_steps`` interventions.
    """

    def __init__(self, cfg: Phase1Config):
        self.episode = EpisodeConfig(n_observational=cfg.n_observational,
                                     n_interventions=cfg.eval_steps,
                                     surrogate=SurrogateConfig(analytic=cfg.surrogate))
        self.scms, self.keys = cell_batch(resolve_scm(cfg.eval_scm), 1_000_003 + cfg.seed,
                                          range(cfg.eval_seeds))
        d = self.scms.adj.shape[-1]
        self.policy_run = make_batch_runner(self.episode, d, make_policy_selector(
            cfg.policy, analytic=cfg.surrogate))
        base = make_batch_runner(self.episode, d)
        self.random_auc = f1_auc(base(self.keys, self.scms, None, method_id(Method.RANDOM)).record.f1)

    def __call__(self, params) -> dict:
        rec = self.policy_run(self.keys, self.scms, params, method_id(Method.GRPO_ACTIVE)).record
        auc = f1_auc(rec.f1)
        diff, _, win, p = paired_stats(auc - self.random_auc)
        return {"eval_f1_auc_policy": float(auc.mean()), "eval_f1_auc_random": float(self.random_auc.mean()),
                "eval_f1_auc_diff": diff, "eval_p": p, "eval_win_rate": win}


# --------------------------------------------------------------------------- training loop

def init_params(cfg: Phase1Config) -> Any:
    """Initial policy parameters (deterministic in ``cfg.seed``)."""
    from causal_grpo.networks import dummy_input
    return make_policy(cfg.policy).init(jax.random.PRNGKey(cfg.seed), dummy_input(cfg.policy))


# Under partitionable threefry split(key, n)[i] is fold_in(key, i): a stream of its own for
# training, away from the small indices Haiku's init draws PRNGKey(seed)'s weights from.
TRAIN_STREAM = 0x5452414E


def train_key(cfg: Phase1Config) -> Array:
    return jax.random.fold_in(jax.random.PRNGKey(cfg.seed), TRAIN_STREAM)


class Trainer:
    """The Phase-1 learner: collects (via ``collect_fn``), updates, evaluates.

    ``collect_fn(stage_index, params, keys) -> (Batch, stats)`` defaults to in-process
    collection; ``cluster.grpo_driver`` passes one that spreads episodes over Ray actors.
    """

    def __init__(self, cfg: Phase1Config, collect_fn: Callable | None = None):
        cfg.validate()
        self.cfg = cfg
        self.net = make_policy(cfg.policy)
        self._collectors: dict[int, Callable] = {}
        self.collect_fn = collect_fn or self._collect_local
        self._update = jax.jit(lambda s, b: grpo.update(s, b, self.net, cfg.grpo))
        self.key = train_key(cfg)

    def _collect_local(self, stage_index: int, params, keys):
        if stage_index not in self._collectors:
            self._collectors[stage_index] = make_collect(self.cfg, self.cfg.curriculum[stage_index])
        chunks = episode_chunks(keys, self.cfg.rollout_chunk)
        parts = [self._collectors[stage_index](params, c) for c in chunks]
        return concat_batches([p[0] for p in parts]), merge_stats([p[1] for p in parts],
                                                                  [len(c) for c in chunks])

    def initial_state(self) -> grpo.TrainState:
        return grpo.init_train_state(init_params(self.cfg), self.cfg.grpo)

    def episode_keys(self, iteration: int) -> Array:
        n = self.cfg.curriculum[self.cfg.stage_of(iteration)].episodes
        return jax.vmap(lambda e: episode_key(self.key, iteration, e))(jnp.arange(n))

    def step(self, state: grpo.TrainState, iteration: int) -> tuple[grpo.TrainState, dict]:
        """One iteration: collect a batch with the current policy, then update on it."""
        stage = self.cfg.stage_of(iteration)
        t0 = time.time()
        keys = self.episode_keys(iteration)
        batch, stats = jax.block_until_ready(self.collect_fn(stage, state.params, keys))
        t1 = time.time()
        state, m = self._update(state, batch)
        m = {k: float(v) for k, v in m.items()}
        t2 = time.time()
        n_cand = len(keys) * self.cfg.steps_per_episode * self.cfg.grpo.group_size
        return state, ({"iteration": iteration, "stage": stage,
                        "d_pad": self.cfg.curriculum[stage].d_pad}
                       | {k: float(v) for k, v in stats.items()} | m
                       | {"collect_s": t1 - t0, "update_s": t2 - t1,
                          "candidates_per_s": n_cand / max(t1 - t0, 1e-9)})


# --------------------------------------------------------------------------- the training run

def config_to_dict(cfg: Phase1Config) -> dict:
    from causal_grpo.results import jsonable
    return jsonable(dataclasses.asdict(cfg))


def run_record(cfg: Phase1Config, collect: str | None = None) -> dict:
    """A run's settings as its checkpoints record them (``config.json``'s "training"), the key a
    resume must match: the configuration, JAX's numerics and, unless it all runs on CPUs, the
    kind of device of the rollouts (``collect``; None: this process's) and of the updates (this
    process's): GPU and CPU kernels differ in their last bits, so a run never goes on on the
    other kind, as a sweep's cells are keyed by theirs."""
    import jax

    from causal_grpo.jaxcache import numerics
    update = jax.default_backend()
    collect = collect or update
    where = {} if collect == update == "cpu" else {"device": {"rollouts": collect,
                                                              "updates": update}}
    return config_to_dict(cfg) | {"numerics": numerics()} | where


def trainer_state_arrays(state: grpo.TrainState, iteration: int) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves(state)
    out = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
    out["iteration"] = np.asarray(iteration)
    return out


def restore_trainer_state(template: grpo.TrainState, arrays: dict) -> tuple[grpo.TrainState, int]:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    keys = sorted(k for k in arrays if k.startswith("leaf_"))
    if len(keys) != len(leaves):
        raise ValueError("trainer state does not match this configuration")
    new = []
    for k, t in zip(keys, leaves):
        a = arrays[k]
        if a.shape != np.shape(t):
            raise ValueError(f"trainer state leaf {k} has shape {a.shape}, expected {np.shape(t)}")
        new.append(jnp.asarray(a, dtype=jnp.asarray(t).dtype))
    return jax.tree_util.tree_unflatten(treedef, new), int(arrays["iteration"])


def _shown(v: Any) -> str:
    return "absent" if v is MISSING else json.dumps(v, default=str)


def latest_checkpoint(out_dir: str) -> tuple[str, int] | None:
    """The ``step_<n>`` checkpoint with the largest n that has a trainer state, if any."""
    import os
    from causal_grpo.checkpoint import TRAINER_FILE
    best = None
    if not os.path.isdir(out_dir):
        return None
    for name in os.listdir(out_dir):
        if name.startswith("step_") and name[5:].isdigit():
            n = int(name[5:])
            if os.path.exists(os.path.join(out_dir, name, TRAINER_FILE)) and (best is None or n > best[1]):
                best = (os.path.join(out_dir, name), n)
    return best


class Resume(NamedTuple):
    """What ``out_dir`` holds of this run, read and checked before any compute."""
    finished: dict | None                 # a finished run's final metrics
    note: str                             # what to log about it
    state: grpo.TrainState | None         # the newest checkpoint's trainer state
    start: int                            # the iteration to go on from
    rows: list[dict]                      # the train log's rows before ``start``
    elapsed: float                        # seconds the run took before ``start``


def _check_policy(path: str, remedy: str) -> None:
    """A checkpoint's policy as Phase 2 would load it; a damaged one is a one-line
    :class:`UserError` that ends with ``remedy``."""
    from causal_grpo.checkpoint import CheckpointError, load_grpo_policy
    from causal_grpo.errors import UserError
    try:
        load_grpo_policy(path)
    except CheckpointError as e:
        if str(e).startswith("cannot read"):           # the system's refusal, not the file's
            raise UserError(f"{e}; fix it and rerun") from None
        raise UserError(f"{e}: a damaged run; {remedy}") from None


def read_resume(cfg: Phase1Config, out_dir: str, resume: bool = True,
                collect: str | None = None,
                advice: str = "use a new --output-dir (or the flags it was run with, by the "
                              "same code, to resume)") -> Resume:
    """Read what ``out_dir`` holds of a run of ``cfg`` (rollouts on ``collect``: see
    :func:`run_record`); a run of other settings or a damaged file is a :class:`UserError`
    naming it (with what to remove), rather than a traceback. ``advice`` ends the message about
    a run of other settings (the job that asks knows its flags)."""
    import os
    import zipfile

    import pandas as pd

    from causal_grpo.checkpoint import TRAINER_FILE, read_config, versions
    from causal_grpo.errors import UserError

    nothing = Resume(None, "", None, 0, [], 0.0)
    if not resume:
        return nothing
    final_dir = os.path.join(out_dir, "final")
    untrained = os.path.join(out_dir, "step_0")
    if os.path.isdir(untrained):
        # What training adds is measured against it (benchmark eval): a run whose untrained
        # policy is damaged would finish and be refused only there.
        _check_policy(untrained, f"remove {untrained} to rebuild it from the run's settings")
    found = latest_checkpoint(out_dir)
    # A finished run is judged by its final config alone (nothing else of it is read).
    existing = final_dir if os.path.exists(os.path.join(final_dir, "config.json")) else (
        found[0] if found else None)
    if existing is not None and not os.path.exists(os.path.join(existing, "config.json")):
        # The settings a checkpoint was trained with are its resume key; every checkpoint is
        # written whole, so one without them is damaged (or copied in part by hand).
        raise UserError(f"{existing} has no config.json (the settings it was trained with); "
                        f"remove {existing} to resume from the checkpoint before it")
    if existing is not None:
        stored = read_config(os.path.join(existing, "config.json"))
        current = json.loads(json.dumps(run_record(cfg, collect), default=str))
        diff = differences(stored.get("training"), current)
        # A finished run trained before a setting existed is complete as it stands; an
        # unfinished one would go on under settings it did not start with.
        added = [k for k, there, _ in diff if there is MISSING]
        if diff and (existing != final_dir or len(added) < len(diff)):
            # Values that differ first: settings only added since are seldom the cause.
            diff = sorted(diff, key=lambda d: d[1] is MISSING)
            shown = "; ".join(f"{k}: {_shown(a)} there, {_shown(b)} here"
                              for k, a, b in diff[:3])
            more = f"; and {len(diff) - 3} more" if len(diff) > 3 else ""
            raise UserError(f"{out_dir} holds a run with a different configuration ({shown}"
                            f"{more}); {advice}")
        if existing == final_dir:
            new = sorted({k.split(".")[0] for k in added})
            since = f" (trained before its settings had {', '.join(new)})" if new else ""
            metrics = stored.get("metrics")
            if not isinstance(metrics, dict):
                raise UserError(f"{final_dir}/config.json has no metrics: a damaged run; remove "
                                f"{final_dir} to finish it again from its newest checkpoint")
            _check_policy(final_dir, f"remove {final_dir} to finish it again from its newest "
                                     "checkpoint")
            return nothing._replace(
                finished=metrics, note=f"{final_dir} exists: training already complete{since}")
    if found is None:
        return nothing
    template = grpo.init_train_state(init_params(cfg), cfg.grpo)
    try:
        with np.load(os.path.join(found[0], TRAINER_FILE)) as z:
            state, start = restore_trainer_state(template, {k: z[k] for k in z.files})
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise UserError(f"{found[0]}/{TRAINER_FILE} is unreadable ({type(e).__name__}); "
                        f"remove {found[0]} to resume from the checkpoint before it") from None
    if start != found[1] or start > cfg.iterations:
        raise UserError(f"{found[0]}/{TRAINER_FILE} holds iteration {start} of "
                        f"{cfg.iterations}, its directory says {found[1]}; remove "
                        f"{found[0]} to resume from the checkpoint before it")
    rows, elapsed = [], 0.0
    log_path = os.path.join(out_dir, "train_log.csv")
    if os.path.exists(log_path):
        try:
            rows = [r for r in pd.read_csv(log_path).to_dict("records")
                    if r["iteration"] < start]
            elapsed = float(rows[-1].get("elapsed_s", 0.0)) if rows else 0.0
            if not math.isfinite(elapsed):
                raise ValueError("elapsed_s")
        except (OSError, ValueError, KeyError, TypeError, pd.errors.EmptyDataError) as e:
            raise UserError(f"{log_path} is unreadable ({type(e).__name__}); remove it to "
                            "resume (the log then starts at the resumed iteration)") from None
    note = f"resuming from {found[0]} (iteration {start})"
    # Other code or library releases go on from the checkpoint (refusing would throw the
    # finished iterations away), but the log says so: the result is a run of neither.
    there = stored.get("versions")          # ``existing`` is found[0] here
    there = there if isinstance(there, dict) else {}
    moved = [f"{k} {there.get(k, 'unrecorded')} there, {v} here"
             for k, v in versions().items() if there.get(k) != v]
    if moved:
        which = "other" if there else "unrecorded"
        note += (f"; trained so far under {which} versions (" + "; ".join(moved) + "): the "
                 "final policy may not be what an uninterrupted run under either gives")
    return Resume(None, note, state, start, rows, elapsed)


def run_training(cfg: Phase1Config, out_dir: str, collect_fn: Callable | None = None,
                 log: Callable[[str], None] = print, log_every: int = 10,
                 resume: bool = True, read: Resume | None = None,
                 collect: str | None = None) -> dict:
    """Train, evaluate every ``eval_every`` iterations, checkpoint; resumes from ``out_dir``.

    Writes ``out_dir/step_0/`` (the untrained policy) before the first update,
    ``out_dir/step_<n>/`` every ``checkpoint_every`` iterations and ``out_dir/final/``
    at the end (each with ``policy_params.pkl`` and ``config.json``), and ``train_log.csv``
    (one row per iteration). Returns the final metrics. ``read``: what
    :func:`read_resume` already found in ``out_dir`` (else it is read here); ``collect``: the
    kind of device ``collect_fn`` runs on (None: this process's; :func:`run_record`).
    """
    import os

    import pandas as pd

    from causal_grpo import io
    from causal_grpo.checkpoint import PARAMS_FILE, save_checkpoint

    if os.path.isdir(out_dir):
        io.drop_stale_partials(out_dir)          # what a killed run was writing
    # Everything read from out_dir is checked before anything is compiled or run.
    got = read if read is not None else read_resume(cfg, out_dir, resume, collect)
    if got.note:
        log(got.note)
    untrained = os.path.join(out_dir, "step_0")
    if ((got.finished is not None or got.state is not None)
            and not os.path.exists(os.path.join(untrained, PARAMS_FILE))):
        # Removed (a damaged one's remedy): the untrained policy is a function of the settings.
        initial = grpo.init_train_state(init_params(cfg), cfg.grpo)
        save_checkpoint(untrained, initial.params, cfg.policy, run_record(cfg, collect),
                        {"iteration": 0}, trainer_state_arrays(initial, 0))
        log(f"{untrained} rebuilt from the run's settings (the untrained policy)")
    if got.finished is not None:
        return got.finished
    trainer = Trainer(cfg, collect_fn)
    evaluator = Evaluator(cfg) if cfg.eval_every > 0 else None
    state = got.state if got.state is not None else trainer.initial_state()
    start, rows, found = got.start, got.rows, got.state is not None
    log_path = os.path.join(out_dir, "train_log.csv")
    train_dict = run_record(cfg, collect)
    # Elapsed time goes on from the run's earlier part.
    t_start = time.time() - got.elapsed
    last_eval: dict = {}

    def checkpoint(name: str, iteration: int, metrics: dict) -> None:
        save_checkpoint(os.path.join(out_dir, name), state.params, cfg.policy, train_dict,
                        metrics | {"iteration": iteration},
                        trainer_state_arrays(state, iteration))

    if not found:   # the untrained policy: what training adds is measured against it
        checkpoint("step_0", 0, {})
    for it in range(start, cfg.iterations):
        state, m = trainer.step(state, it)
        for k, v in m.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise FloatingPointError(f"non-finite {k} at iteration {it}")
        done = it + 1
        # A resumed run checks where an uninterrupted one would: its log is that run's log.
        if evaluator is not None and (done % cfg.eval_every == 0 or done == cfg.iterations or it == 0):
            last_eval = evaluator(state.params)
            m |= last_eval
            log(f"[eval] iteration {done}: held-out {cfg.eval_scm} F1-AUC(1-{cfg.eval_steps}) "
                f"policy {last_eval['eval_f1_auc_policy']:.3f} vs random "
                f"{last_eval['eval_f1_auc_random']:.3f} (diff {last_eval['eval_f1_auc_diff']:+.3f}, "
                f"one-sided p {last_eval['eval_p']:.2g}, win rate {last_eval['eval_win_rate']:.2f})")
        m["elapsed_s"] = time.time() - t_start
        rows.append(m)
        if it % log_every == 0 or done == cfg.iterations:
            log(f"iter {done:4d}/{cfg.iterations} stage {m['stage']} (d<={m['d_pad']}) "
                f"reward {m['reward']:+.3f} entropy {m['entropy']:.2f} "
                f"target-parent {m['is_target_parent']:.2f} out-degree {m['chosen_out_degree']:.2f}"
                f"/{m['mean_out_degree']:.2f} |v| {m['abs_value']:.2f} extreme {m['value_at_extreme']:.2f} "
                f"all-equal {m['all_equal']:.2f} clip {m['clip_frac']:.3f} "
                f"cand/s {m['candidates_per_s']:.0f} [{m['elapsed_s']:.0f}s]")
        saving = cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0
        # With each checkpoint too: a resume keeps the log's rows before its checkpoint.
        if done % 10 == 0 or done == cfg.iterations or saving:
            io.write_atomic(log_path, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
        if saving:
            checkpoint(f"step_{done}", done, m)
    final_metrics = (rows[-1] if rows else {}) | last_eval
    checkpoint("final", cfg.iterations, final_metrics)
    io.write_atomic(log_path, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    return final_metrics
