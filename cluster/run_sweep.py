"""Run a Phase-2 sweep in-process or on Ray, persisting each finished batch (resumable)."""

from __future__ import annotations

import os
import sys
from typing import Any

from causal_grpo.results import claim_output_dir, record_run
from causal_grpo.sweep import (CellStore, PolicyHandle, SweepConfig, plan_batches, run_batch,
                               sweep_digest)


def run_sweep(cfg: SweepConfig, sources: dict, policy: PolicyHandle | None, output_dir: str,
              num_workers: int = 0, address: str | None = None, gpus_per_worker: float = 0.0,
              progress: bool = True, settings: dict | None = None) -> dict[Any, dict]:
    """All batches of ``cfg``; stored batches are loaded, the rest computed and stored.

    With ``settings`` (what the output files depend on), ``output_dir`` is first claimed for
    them (:func:`causal_grpo.results.claim_output_dir` refuses another run's directory) and
    they are recorded in its ``run.json`` before the first batch runs.
    """
    from tqdm import tqdm

    if settings is not None:
        claim_output_dir(output_dir, settings)
    store = CellStore(os.path.join(output_dir, "cells"), sweep_digest(cfg, policy, sources))
    batches = plan_batches(cfg)
    stored = ((b, store.load(b)) for b in batches)
    results = {b: arrays for b, arrays in stored if arrays is not None}
    todo = [b for b in batches if b not in results]
    pool = None
    if num_workers > 0 and todo:
        # Connect and check the cluster before printing anything: bad cluster input is one line.
        from cluster.sweep_driver import SweepPool
        pool = SweepPool(cfg, sources, policy, num_workers, address, gpus_per_worker)
        # Largest graphs first: the exact posterior costs ~2^d, so this keeps one huge batch
        # from running alone at the end while the other workers idle.
        todo.sort(key=lambda b: -sources[b.scm].d)
    if settings is not None:
        record_run(output_dir, settings)
    try:
        bar_on = progress and sys.stderr.isatty()
        with tqdm(total=len(batches), initial=len(results), desc="phase 2", unit="batch",
                  disable=not bar_on) as bar:
            finished = (pool.run(todo) if pool is not None else
                        ((b, run_batch(b, cfg, policy, sources)) for b in todo))
            for b, arrays in finished:
                results[b] = arrays
                store.save(b, arrays)
                bar.update(1)
                if progress and not bar_on:          # a log, not a terminal: plain lines
                    print(f"phase 2: {len(results)}/{len(batches)} batches "
                          f"({b.scm} {b.method.value})")
    finally:
        if pool is not None:
            pool.close()
    return results
