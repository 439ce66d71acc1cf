"""Phase-1 training in-process or with Ray rollout actors (the same numbers either way: both
run ``rollout_chunk`` episodes per compiled call)."""

from __future__ import annotations

from causal_grpo.phase1 import Phase1Config, Resume, read_resume, run_training
from cluster.run_sweep import cell_device


def train(cfg: Phase1Config, output_dir: str, num_workers: int = 0, address: str | None = None,
          gpus_per_worker: float = 0.0, read: Resume | None = None) -> dict:
    """``read``: what :func:`read_resume` found in ``output_dir`` when the caller checked it."""
    collect = cell_device(num_workers, gpus_per_worker)     # where the rollouts run
    # What the directory holds is checked (and a finished run returned) before Ray starts.
    if read is None:
        read = read_resume(cfg, output_dir, collect=collect)
    if num_workers == 0 or read.finished is not None:
        return run_training(cfg, output_dir, read=read, collect=collect)
    from cluster.grpo_driver import RolloutPool
    with RolloutPool(cfg, num_workers, address=address, gpus_per_worker=gpus_per_worker) as pool:
        return run_training(cfg, output_dir, collect_fn=pool.collect, read=read, collect=collect)
