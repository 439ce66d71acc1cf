"""Phase-1 throughput: candidate interventions evaluated per second (reward included)."""

from __future__ import annotations

import dataclasses
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
    states = stage.episodes * cfg.steps_per_episode
    n = states * cfg.grpo.group_size
    # Every posterior update of the call: one per candidate, plus the lookahead's two per
    # variable per state (the same exact-posterior work, spent on the policy's input).
    updates = n + states * 2 * stage.d_pad * cfg.policy.lookahead
    best = min(times)
    return {"lookahead": cfg.policy.lookahead, "d_pad": stage.d_pad,
            "sizes": f"{min(stage.sizes)}-{max(stage.sizes)}",
            "candidates_per_call": n, "seconds_per_call": best,
            "candidates_per_s": n / best, "posterior_updates_per_s": updates / best,
            "first_call_s": compile_s}


def bench_phase1(args) -> pd.DataFrame:
    """The default curriculum with the default policy (lookahead input) and without it."""
    rows = []
    base = P.Phase1Config()
    for cfg in (base, dataclasses.replace(base, policy=dataclasses.replace(
            base.policy, lookahead=0, lookahead_prior=0.0))):
        name = "lookahead (default)" if cfg.policy.lookahead else "no lookahead"
        part = []
        for i in range(len(cfg.curriculum)):
            row = measure_collect(cfg, i, None)
            part.append(row)
            print(f"{name}: stage {i} (d {row['sizes']}, padded {row['d_pad']}): "
                  f"{row['candidates_per_s']:.0f} candidate evaluations/s, "
                  f"{row['posterior_updates_per_s']:.0f} posterior updates/s "
                  f"({row['candidates_per_call']} candidates per call, "
                  f"{row['seconds_per_call']:.2f} s; first call incl. compile "
                  f"{row['first_call_s']:.1f} s)", flush=True)
        iters = [s.iterations for s in cfg.curriculum]
        total = sum(r["candidates_per_call"] * it for r, it in zip(part, iters))
        secs = sum(r["seconds_per_call"] * it for r, it in zip(part, iters))
        print(f"{name}: default curriculum: {total} candidates, {total / secs:.0f} candidate "
              f"evaluations/s averaged over the curriculum (collection only)", flush=True)
        rows += part
    return pd.DataFrame(rows)
