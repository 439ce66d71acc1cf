"""Ray scaling: the same work in-process, with 1 and with 2 workers (Phase 1 and Phase 2)."""

from __future__ import annotations

import math
import time

import jax
import numpy as np
import pandas as pd

from causal_grpo import phase1 as P
from causal_grpo.active_learning import EpisodeConfig, Method
from causal_grpo.scm_families import resolve_scm
from causal_grpo.sweep import SweepConfig, plan_batches, run_batch


def _sweep_config(seconds: float) -> tuple[SweepConfig, dict]:
    # 100 cells per second of --seconds, in whole batches of 64 (the reference machine computes
    # about 38 hard cells/s in-process, so a measurement there takes about 2.6 x --seconds).
    seeds = max(64, int(seconds * 100 / 64) * 64)
    cfg = SweepConfig(scms=("hard",), methods=(Method.RANDOM,), seeds=seeds,
                      episode=EpisodeConfig(), batch_size=64)
    return cfg, {"hard": resolve_scm("hard")}


def bench_ray(args) -> pd.DataFrame:
    from cluster.connect import connect, shutdown_if_started
    from cluster.grpo_driver import RolloutPool
    from cluster.sweep_driver import SweepPool
    from jobs.bench_grpo import measure_collect

    rows = []
    cfg, sources = _sweep_config(args.seconds)
    batches = plan_batches(cfg)
    p1 = P.Phase1Config()
    stage = 1                                                    # d 6..10, the main stage
    started = connect() if any(args.workers) else False          # RAY_ADDRESS, else local
    try:
        if any(args.workers):      # before any measurement: the largest count must fit
            from cluster.connect import check_resources
            check_resources(0.0, max(args.workers), "--workers")
        for workers in args.workers:
            t0 = time.time()
            if workers == 0:
                run_batch(batches[0], cfg, None, sources)        # compile outside the timing
                t1 = time.time()
                for b in batches:
                    run_batch(b, cfg, None, sources)
                elapsed, warm = time.time() - t1, t1 - t0
                ph1 = measure_collect(p1, stage, None)
            else:
                import ray
                with SweepPool(cfg, sources, None, workers) as pool:
                    # Every actor compiles outside the timing: the pool hands the timed batches
                    # to whichever actor is idle first, whatever the batch count.
                    ray.get([a.run.remote(batches[0]) for a in pool.actors])
                    t1 = time.time()
                    for _ in pool.run(batches):                  # results are not kept
                        pass
                    elapsed, warm = time.time() - t1, t1 - t0
                with RolloutPool(p1, workers) as rp:
                    # A stage's call uses as many actors as it has chunks (4 in stage 1): the
                    # others would compile inside the timed calls.
                    tr = P.Trainer(p1, rp.collect)
                    first = sum(s.iterations for s in p1.curriculum[:stage])
                    shard = np.asarray(P.episode_chunks(tr.episode_keys(first),
                                                        p1.rollout_chunk)[0])
                    params = ray.put(jax.device_get(tr.initial_state().params))
                    ray.get([a.collect.remote(stage, params, shard) for a in rp.actors])
                    ph1 = measure_collect(p1, stage, rp.collect)
            row = {"workers": workers, "cells": cfg.seeds, "cells_per_batch": cfg.batch_size,
                   "sweep_s": elapsed, "cells_per_s": cfg.seeds / elapsed,
                   # Each worker computes its share of the batches one after another.
                   "seconds_per_batch": elapsed / math.ceil(len(batches) / max(workers, 1)),
                   "startup_s": warm, "phase1_candidates_per_s": ph1["candidates_per_s"],
                   "phase1_candidates_per_call": ph1["candidates_per_call"]}
            rows.append(row)
            print(f"workers={workers}: Phase 2 {row['cells_per_s']:.1f} cells/s ({cfg.seeds} hard "
                  f"cells, {cfg.batch_size} per call, {row['seconds_per_batch']:.2f} s per call; "
                  f"startup {warm:.1f} s) | Phase 1 {row['phase1_candidates_per_s']:.0f} "
                  "candidates/s")
    finally:
        shutdown_if_started(started)
    df = pd.DataFrame(rows)
    base = df[df.workers == 0]
    if not base.empty:
        b = base.iloc[0]
        for _, r in df[df.workers > 0].iterrows():
            print(f"  {int(r.workers)} worker(s) vs in-process: Phase 2 x{r.cells_per_s / b.cells_per_s:.2f}, "
                  f"Phase 1 x{r.phase1_candidates_per_s / b.phase1_candidates_per_s:.2f}")
    return df
