"""Run a Phase-2 sweep in-process or on Ray, persisting each finished batch (resumable)."""

from __future__ import annotations

import os
from typing import Any

from causal_grpo.sweep import (CellStore, PolicyHandle, SweepConfig, plan_batches, run_batch,
                               sweep_digest)


def _progress(enabled: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, unit="batch", file=None)


def run_sweep(cfg: SweepConfig, sources: dict, policy: PolicyHandle | None, output_dir: str,
              num_workers: int = 0, address: str | None = None, gpus_per_worker: float = 0.0,
              progress: bool = True) -> dict[Any, dict]:
    """All batches of ``cfg``; stored batches are loaded, the rest computed and stored."""
    store = CellStore(os.path.join(output_dir, "cells"), sweep_digest(cfg, policy, sources))
    batches = plan_batches(cfg)
    results = {b: store.load(b) for b in batches if store.has(b)}
    todo = [b for b in batches if b not in results]
    bar = _progress(progress, len(batches), "phase 2")
    bar.update(len(results))
    if num_workers == 0:
        for b in todo:
            results[b] = run_batch(b, cfg, policy, sources)
            store.save(b, results[b])
            bar.update(1)
    else:
        from cluster.sweep_driver import run_batches_on_ray
        for b, arrays in run_batches_on_ray(todo, cfg, sources, policy, num_workers=num_workers,
                                            address=address, gpus_per_worker=gpus_per_worker):
            results[b] = arrays
            store.save(b, arrays)
            bar.update(1)
    bar.close()
    return results
