"""Phase 2 on Ray: sweep batches run by actors wrapping ``causal_grpo.sweep.run_batch``."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Iterator

import jax
import numpy as np
import ray

from causal_grpo.sweep import Batch, PolicyHandle, SweepConfig, run_batch
from cluster.pool import ActorGroup, Worker, worker_actor


@worker_actor
class SweepWorker(Worker):
    """Holds compiled Phase-2 programs; runs one batch of cells per call."""

    def __init__(self, cfg: SweepConfig, sources: dict, policy_data, num_workers: int = 1,
                 memory_registry: str | None = None):
        super().__init__()
        self.cfg, self.sources = cfg, sources
        # Each worker takes one CPU, so at most this node's CPUs of them share its memory.
        node = ray.get_runtime_context().get_node_id()
        cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node), 1)
        self.memory_share = max(1, min(num_workers, int(cpus)))
        self.memory_registry = memory_registry
        self.policy = None
        if policy_data is not None:
            from causal_grpo.policy import make_policy_selector
            params, digest, config, greedy, draws = policy_data
            self.policy = PolicyHandle(make_policy_selector(config, greedy, draws),
                                       jax.tree.map(np.asarray, params), digest, config, greedy,
                                       draws)

    def run(self, batch: Batch) -> dict:
        return run_batch(batch, self.cfg, self.policy, self.sources, self.memory_share,
                         self.memory_registry)


class SweepPool(ActorGroup):
    """``num_workers`` sweep actors behind a :class:`FaultTolerantPool`."""

    def __init__(self, cfg: SweepConfig, sources: dict, policy: PolicyHandle | None,
                 num_workers: int, address: str | None = None, gpus_per_worker: float = 0.0,
                 **pool_kwargs):
        policy_data = None
        if policy is not None:
            policy_data = (jax.device_get(policy.params), policy.digest, policy.config,
                           policy.greedy, policy.lookahead_draws)
        # Where this pool's workers on one machine note what their running programs hold
        # (causal_grpo.sweep.held_by_others): a directory of that machine's temp space, of
        # this pool alone (no shared parent another user may own).
        self.memory_registry = os.path.join(tempfile.gettempdir(),
                                            f"causal-grpo-memory-{uuid.uuid4().hex}")
        payload = (cfg, sources, policy_data, num_workers, self.memory_registry)
        super().__init__(SweepWorker, lambda: payload, num_workers, address, gpus_per_worker,
                         **pool_kwargs)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.memory_registry, ignore_errors=True)   # this machine's copy

    def run(self, batches: list[Batch]) -> Iterator[tuple[Batch, dict]]:
        for k, arrays in self.pool.map_unordered(
                lambda a, b: a.run.remote(b), batches,
                describe=lambda b: f"{b.scm} {b.method.value} seeds {b.seeds[0]}-{b.seeds[-1]}"):
            yield batches[k], arrays
