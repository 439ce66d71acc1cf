"""Phase-1 throughput: candidate interventions evaluated per second (reward included)."""

from __future__ import annotations

import time

import jax
import pandas as pd

from causal_grpo import phase1 as P


def measure_collect(cfg: P.Phase1Config, stage_index: int, collect_fn, repeats: int = 3) -> dict:
    """Candidates/s of ``collect_fn`` on one stage (compile excluded), with its compile time."""
    tr = P.Trainer(cfg, collect_fn)
    params = tr.initial_state().params
    stage = cfg.curriculum[stage_index]
    first_it = sum(s.iterations for s in cfg.curriculum[:stage_index])
    t0 = time.time()
    jax.block_until_ready(tr.collect_fn(stage_index, params, tr.episode_keys(first_it)))
    compile_s = time.time() - t0
    times = []
    for r in range(repeats):
        keys = tr.episode_keys(first_it + 1 + r)
        t0 = time.time()
        jax.block_until_ready(tr.collect_fn(stage_index, params, keys))
        times.append(time.time() - t0)
    n = stage.episodes * cfg.steps_per_episode * cfg.grpo.group_size
    best = min(times)
    return {"d_pad": stage.d_pad, "sizes": f"{min(stage.sizes)}-{max(stage.sizes)}",
            "candidates_per_call": n, "seconds_per_call": best,
            "candidates_per_s": n / best, "first_call_s": compile_s}


def bench_phase1(args) -> pd.DataFrame:
    cfg = P.Phase1Config()
    rows = []
    for i in range(len(cfg.curriculum)):
        row = measure_collect(cfg, i, None)
        rows.append(row)
        print(f"stage {i} (d {row['sizes']}, padded {row['d_pad']}): {row['candidates_per_s']:.0f} "
              f"candidate evaluations/s ({row['candidates_per_call']} per call, "
              f"{row['seconds_per_call']:.2f} s; first call incl. compile {row['first_call_s']:.1f} s)",
              flush=True)
    df = pd.DataFrame(rows)
    iters = [s.iterations for s in cfg.curriculum]
    total = sum(r["candidates_per_call"] * it for r, it in zip(rows, iters))
    secs = sum(r["seconds_per_call"] * it for r, it in zip(rows, iters))
    print(f"default curriculum: {total} candidates, {total / secs:.0f} candidate evaluations/s "
          f"averaged over the curriculum (collection only)")
    return df
