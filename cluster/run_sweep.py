"""Run a Phase-2 sweep in-process or on Ray, persisting each finished batch (resumable)."""

from __future__ import annotations

import concurrent.futures
import os
import sys
from typing import Any, Callable

from causal_grpo import io
from causal_grpo.jaxcache import carry_numerics
from causal_grpo.results import claim_output_dir, record_run
from causal_grpo.sweep import (CellStore, PolicyHandle, SweepConfig, plan_batches, run_batch,
                               sweep_digest)


def in_process(todo: list, cfg: SweepConfig, policy: PolicyHandle | None, sources: dict):
    """``(batch, run_batch(batch, ...))`` for each batch, computed on a thread of its own and
    waited for in slices: a compiled batch runs for minutes at d = 100 without returning to
    Python, and Ctrl-C, which only the main thread receives, waited for its end. On the
    interrupt the job exits and the batch's work is dropped (finished cells are on disk)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="phase2-batch")
    # JAX's context managers (a `with jax.default_matmul_precision(...)` around the call) are
    # thread-local: carried over, so that the batches compute what their cell key records.
    run = carry_numerics(run_batch)
    try:
        for b in todo:
            future = pool.submit(run, b, cfg, policy, sources)
            while True:
                try:
                    arrays = future.result(timeout=0.1)
                    break
                except concurrent.futures.TimeoutError:
                    continue
            yield b, arrays
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def cell_device(num_workers: int, gpus_per_worker: float) -> str:
    """The kind of device a sweep's cells (or Phase 1's rollouts) are computed on: GPU and CPU
    kernels differ in their last bits, so a sweep resumed on the other kind must not reuse the
    first one's cells (nor a training go on there)."""
    if num_workers > 0:
        return "gpu" if gpus_per_worker > 0 else "cpu"     # worker_env pins CPU workers
    import jax
    return jax.default_backend()


def run_sweep(cfg: SweepConfig, sources: dict, policy: PolicyHandle | None, output_dir: str,
              num_workers: int = 0, address: str | None = None, gpus_per_worker: float = 0.0,
              progress: bool = True, settings: dict | None = None,
              on_scm_done: Callable[[str, dict], str | None] | None = None) -> dict[Any, dict]:
    """All batches of ``cfg``; stored batches are loaded, the rest computed and stored.

    Batches run in the sweep's SCM order (``cfg.scms``), on Ray too, so that each SCM finishes
    as early as it can. ``on_scm_done(scm, its batches' results)`` is called once per SCM as
    soon as all its batches are in while other batches remain (at the start for SCMs already
    stored), and what it returns is printed: a long sweep shows its first tables long before
    its end.

    With ``settings`` (what the output files depend on), ``output_dir`` is first claimed for
    them (:func:`causal_grpo.results.claim_output_dir` refuses another run's directory) and
    they are recorded in its ``run.json`` before the first batch runs.
    """
    from tqdm import tqdm

    if settings is not None:
        claim_output_dir(output_dir, settings)
    io.drop_stale_partials(output_dir)          # tables a killed run was writing
    device = cell_device(num_workers, gpus_per_worker)
    # CPU workers compute under the driver's flags with the pinned numerics added.
    flags = None
    if num_workers > 0 and device == "cpu":
        from cluster.connect import worker_env
        flags = worker_env(0)["XLA_FLAGS"]
    stores = {scm: CellStore(os.path.join(output_dir, "cells"),
                             sweep_digest(cfg, policy, sources, scm, device, flags))
              for scm in cfg.scms}
    batches = plan_batches(cfg)
    stored = ((b, stores[b.scm].load(b)) for b in batches)
    results = {b: arrays for b, arrays in stored if arrays is not None}
    todo = [b for b in batches if b not in results]
    pool = None
    if num_workers > 0 and todo:
        # Connect and check the cluster before printing anything: bad cluster input is one line.
        from cluster.sweep_driver import SweepPool
        pool = SweepPool(cfg, sources, policy, num_workers, address, gpus_per_worker)
    if settings is not None:
        record_run(output_dir, settings)
    per_scm = {scm: [b for b in batches if b.scm == scm] for scm in cfg.scms}
    announced = set()
    try:
        bar_on = progress and sys.stderr.isatty()
        with tqdm(total=len(batches), initial=len(results), desc="phase 2", unit="batch",
                  disable=not bar_on) as bar:

            def announce() -> None:
                if not on_scm_done or len(results) == len(batches):   # the caller's turn now
                    return
                for scm, own in per_scm.items():
                    if scm not in announced and all(b in results for b in own):
                        announced.add(scm)
                        text = on_scm_done(scm, {b: results[b] for b in own})
                        if text and bar_on:
                            tqdm.write(text, file=sys.stdout)          # above the bar
                        elif text:
                            print(text, flush=True)

            announce()
            finished = (pool.run(todo) if pool is not None else
                        in_process(todo, cfg, policy, sources))
            for b, arrays in finished:
                results[b] = arrays
                stores[b.scm].save(b, arrays)
                bar.update(1)
                if progress and not bar_on:          # a log, not a terminal: plain lines
                    print(f"phase 2: {len(results)}/{len(batches)} batches "
                          f"({b.scm} {b.method.value})", flush=True)
                announce()
    finally:
        if pool is not None:
            pool.close()
    return results
