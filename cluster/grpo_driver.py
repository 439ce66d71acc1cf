"""Phase 1 on Ray: rollout actors collect GRPO groups; the learner updates in the driver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ray

from causal_grpo.phase1 import (Phase1Config, concat_batches, episode_chunks, make_collect,
                                merge_stats)
from cluster.pool import ActorGroup, Worker, worker_actor


@worker_actor
class RolloutWorker(Worker):
    """Runs a chunk of an iteration's episodes (vmapped in one call) with given parameters."""

    def __init__(self, cfg: Phase1Config):
        super().__init__()
        self.cfg = cfg
        self.collectors = {}

    def collect(self, stage_index: int, params, keys: np.ndarray):
        if stage_index not in self.collectors:
            self.collectors[stage_index] = make_collect(self.cfg, self.cfg.curriculum[stage_index])
        batch, stats = self.collectors[stage_index](params, jnp.asarray(keys))
        return jax.device_get(batch), {k: float(v) for k, v in stats.items()}


class RolloutPool(ActorGroup):
    """``collect(stage, params, keys)`` spread over actors chunk by chunk (``rollout_chunk``
    episodes each, as in-process): the same batch, bit for bit, for any number of actors."""

    def __init__(self, cfg: Phase1Config, num_workers: int, address: str | None = None,
                 gpus_per_worker: float = 0.0, **pool_kwargs):
        self.cfg = cfg
        super().__init__(RolloutWorker, lambda: (cfg,), num_workers, address, gpus_per_worker,
                         **pool_kwargs)

    def collect(self, stage_index: int, params, keys):
        params_ref = ray.put(jax.device_get(params))    # once per iteration, shared by all
        shards = [np.asarray(c) for c in episode_chunks(keys, self.cfg.rollout_chunk)]
        out = dict(self.pool.map_unordered(
            lambda a, shard: a.collect.remote(stage_index, params_ref, shard), shards,
            describe=lambda shard: f"Phase-1 stage {stage_index} rollouts ({len(shard)} episodes)"))
        parts = [out[i] for i in range(len(shards))]     # episode order, whatever finished first
        batch = jax.tree.map(jnp.asarray, concat_batches([p[0] for p in parts]))
        stats = merge_stats([p[1] for p in parts], [len(s) for s in shards])
        return batch, stats
