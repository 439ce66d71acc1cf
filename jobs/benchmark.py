"""Benchmarks that print the numbers quoted in the README (each subcommand prints a table).

    python -m jobs.benchmark gies        # analytic surrogate vs GIES on random ER graphs
    python -m jobs.benchmark phase2      # Phase-2 throughput (runs/s), compile time, peak memory
    python -m jobs.benchmark phase1      # Phase-1 candidate evaluations per second
    python -m jobs.benchmark ray         # in-process vs 1 vs 2 Ray workers (Phase 1 and 2)
    python -m jobs.benchmark ceiling     # the best one-step chooser (knows the SCM) vs the rest
    python -m jobs.benchmark posterior   # where one exact posterior update's time goes, per d
    python -m jobs.benchmark devices     # the same Phase-2 cells on the CPU and an accelerator
    python -m jobs.benchmark eval --grpo-checkpoint RUN [RUN ...] --output-dir OUT
                                         # the frozen evaluation (jobs/bench_eval.py)
    python -m jobs.benchmark scale       # posterior speed, memory, accuracy vs GIES, d = 10..100

Every subcommand takes ``--out FILE`` to also write its table as CSV; ``gies``, ``ceiling`` and
``scale`` then also keep each finished row (``ceiling``: each batch of seeds) in ``FILE.rows/``,
so that rerunning an interrupted command goes on from what it has not finished (timings are not
stitched across runs: the other subcommands measure anew).
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import sys
import time

from causal_grpo.errors import UserError
from jobs._cli import (ArgumentParser, comma_list, list_of, phase2_memory_bytes, positive_float,
                       positive_int, refuse_oversized, run_script, seed_int, user_errors_exit_2)

PROG = "benchmark"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gies_fit(values, intervened, pooled: bool = False):
    """GIES (BIC) on the same rows, grouped into environments by intervention target: exactly
    ``gies.fit_bic``'s result, with its path enumeration replaced (``jobs._gies_fast``); with
    ``pooled``, each node's score on all its non-intervened rows centred once, as pcalg does."""
    import numpy as np

    from jobs._gies_fast import fit_bic, fit_bic_pooled

    groups: dict[tuple, list] = {}
    for x, m in zip(values, intervened):
        groups.setdefault(tuple(np.flatnonzero(m)), []).append(x)
    keys = sorted(groups)
    fit = fit_bic_pooled if pooled else fit_bic
    est, _ = fit([np.asarray(groups[k]) for k in keys], [list(k) for k in keys])
    return (est != 0).astype(int)


GIES_COLUMNS = frozenset({"d", "interventions", "seeds", "gies_seconds_per_fit"} | {
    f"{side}_{m}{ci}" for side in ("ours", "gies") for m in ("f1", "shd") for ci in ("", "_ci95")})


def _gies_line(row: dict) -> str:
    return (f"d={row['d']:2d} T={row['interventions']:3d}  posterior F1 "
            f"{row['ours_f1']:.3f} SHD {row['ours_shd']:5.2f}   GIES F1 {row['gies_f1']:.3f} "
            f"SHD {row['gies_shd']:5.2f}")


def bench_gies(args) -> "pd.DataFrame":
    """Mean final F1/SHD of the analytic posterior (exact up to 16 variables, order MCMC
    above: the table says which) vs GIES on identical data, per (d, budget)."""
    import json

    import numpy as np
    import pandas as pd

    from causal_grpo import io
    from causal_grpo import metrics as M
    from causal_grpo.active_learning import EpisodeConfig, Method, make_batch_runner, method_id
    from causal_grpo.results import fmt_ci, mean_ci
    from causal_grpo.scm_families import FamilyConfig, GraphKind
    from causal_grpo.sweep import cell_batch

    from jobs.bench_scale import kept, settings_digest

    # With --out, each (d, budget) row is kept in FILE.rows/ as it finishes (GIES takes
    # minutes per row at d = 100): a rerun of the same command goes on from the rows not done.
    store = io.ensure_writable_dir(args.out + ".rows", exclusive=True) if args.out else None
    if store:
        io.drop_stale_partials(store)
    rows = []
    for d in args.d:
        src = FamilyConfig(kind=GraphKind.ER, d=d, expected_degree=tuple(args.degree))
        scms, keys = None, None
        for budget in args.budgets:
            path = store and os.path.join(store, settings_digest(
                args, ("cmd", "out", "d", "budgets"), {"d": d, "budget": budget}) + ".json")
            row = kept(path, lambda r: isinstance(r, dict) and set(r) == GIES_COLUMNS)
            if row is not None:
                rows.append(row)
                print(_gies_line(row) + "  (kept)", flush=True)
                continue
            if scms is None:
                scms, keys = cell_batch(src, args.base_seed, range(args.seeds))
            cfg = EpisodeConfig(n_observational=args.n_observational, n_interventions=budget)
            res = make_batch_runner(cfg, d)(keys, scms, None, method_id(Method.RANDOM))
            ours, theirs = [], []
            t_ours = time.time()
            for s in range(args.seeds):
                adj = np.asarray(scms.adj[s])
                ours.append(M.structure_metrics(adj, M.posterior_graph(res.final_probs[s])))
            t_ours = time.time() - t_ours
            t0 = time.time()
            for s in range(args.seeds):
                adj = np.asarray(scms.adj[s])
                g = _gies_fit(np.asarray(res.buffer.values[s]), np.asarray(res.buffer.intervened[s]))
                theirs.append(M.structure_metrics(adj, g))
            t_gies = time.time() - t0
            row = {"d": d, "interventions": budget, "seeds": args.seeds}
            for name, vals in (("ours", ours), ("gies", theirs)):
                for m in ("f1", "shd"):
                    mu, ci = mean_ci(np.array([float(v[m]) for v in vals]))
                    row[f"{name}_{m}"], row[f"{name}_{m}_ci95"] = float(mu), float(ci)
            row["gies_seconds_per_fit"] = t_gies / args.seeds
            if path:    # in the row's own key order, so a resumed table has the same columns
                io.write_text(path, json.dumps(row) + "\n")
            rows.append(row)
            print(_gies_line(row), flush=True)
    df = pd.DataFrame(rows)
    print()
    from causal_grpo.surrogate_bayes import AnalyticConfig
    print("posterior: " + "; ".join(f"d = {d}: {AnalyticConfig().describe(d)}"
                                    for d in sorted(set(df["d"]))))
    print("| d | interventions | seeds | posterior F1 | GIES F1 | posterior SHD | GIES SHD |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for _, r in df.iterrows():
        f1_note = " (F1 n/a: GIES is undirected)" if r["interventions"] == 0 else ""
        print(f"| {int(r['d'])} | {int(r['interventions'])} | {int(r['seeds'])} "
              f"| {fmt_ci(r['ours_f1'], r['ours_f1_ci95'])} "
              f"| {fmt_ci(r['gies_f1'], r['gies_f1_ci95'])}{f1_note} "
              f"| {fmt_ci(r['ours_shd'], r['ours_shd_ci95'], 2)} "
              f"| {fmt_ci(r['gies_shd'], r['gies_shd_ci95'], 2)} |")
    return df


def bench_phase2(args) -> "pd.DataFrame":
    """Complete Phase-2 runs per second with many seeds vmapped, per surrogate; compile apart."""
    import jax
    import pandas as pd

    from causal_grpo.active_learning import EpisodeConfig, Method, make_batch_runner, method_id
    from causal_grpo.scm_families import resolve_scm
    from causal_grpo.surrogate import SurrogateConfig, SurrogateKind
    from causal_grpo.sweep import cell_batch

    from causal_grpo.jaxcache import cache_dir

    rows = []
    spec = resolve_scm(args.scm)
    loaded = None
    if args.grpo_checkpoint:
        from causal_grpo.checkpoint import load_grpo_policy
        loaded = load_grpo_policy(args.grpo_checkpoint)
    cache = cache_dir()
    print(f"compilation cache: {cache or 'off'} (a compile it holds is a load: "
          "CAUSAL_GRPO_JAX_CACHE=off times cold compiles); peak RSS: this process's so far",
          flush=True)
    for kind in args.surrogates:
        seeds = args.seeds if kind == "analytic" else args.neural_seeds
        cfg = EpisodeConfig(n_observational=args.n_observational, n_interventions=args.n_interventions,
                            surrogate=SurrogateConfig(kind=SurrogateKind(kind)))
        run = make_batch_runner(cfg, spec.d)
        scms, keys = cell_batch(spec, 0, range(seeds))
        t0 = time.time()
        compiled = run.lower(keys, scms, None, method_id(Method.RANDOM)).compile()
        compile_s = time.time() - t0
        jax.block_until_ready(compiled(keys, scms, None, method_id(Method.RANDOM)))  # warm
        times = []
        for _ in range(args.repeats):
            t0 = time.time()
            jax.block_until_ready(compiled(keys, scms, None, method_id(Method.RANDOM)))
            times.append(time.time() - t0)
        best = min(times)
        row = {"scm": spec.name, "surrogate": kind, "seeds_vmapped": seeds,
               "steps": args.n_interventions, "compile_s": compile_s,
               "compilation_cache": cache is not None,
               "runs_per_s": seeds / best, "ms_per_run": 1000 * best / seeds,
               "posteriors_per_s": seeds * (args.n_interventions + 1) / best,
               "peak_rss_mb": _peak_rss_mb()}
        rows.append(row)
        print(f"{spec.name} random_active surrogate={kind}: {row['runs_per_s']:.1f} runs/s "
              f"({seeds} seeds vmapped, {args.n_observational}+{args.n_interventions} samples), "
              f"compile {compile_s:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    rows += _bench_workflow(args, spec, loaded)
    return pd.DataFrame(rows)


def _bench_workflow(args, spec, loaded) -> list[dict]:
    """Seconds per episode of the Python workflow: the first (compiles its programs) and the
    mean of the next ones (new seeds, a new intervention function each)."""
    from causal_grpo.active_learning import EpisodeConfig
    from causal_grpo.scm import SCMSpec
    from causal_grpo.two_phase import create_grpo_intervention_fn, run_active_learning
    if not args.workflow_episodes:
        return []
    if not isinstance(spec, SCMSpec):
        print(f"{spec.name} workflow: not timed (the workflow takes a fixed SCM, not a family "
              "of random graphs)", flush=True)
        return []
    cfg = EpisodeConfig(n_observational=args.n_observational, n_interventions=args.n_interventions)
    drivers = {"random (default)": lambda seed: None}
    if loaded is not None:
        drivers["grpo"] = lambda seed: create_grpo_intervention_fn(
            loaded, spec, capacity=cfg.capacity, seed=seed)
    rows = []
    for name, make_fn in drivers.items():
        times = []
        for seed in range(args.workflow_episodes):
            t0 = time.time()
            run_active_learning(spec, cfg, intervention_fn=make_fn(seed), seed=seed)
            times.append(time.time() - t0)
        later = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else float("nan")
        rows.append({"scm": spec.name, "surrogate": "analytic", "workflow": name,
                     "steps": args.n_interventions, "first_episode_s": times[0],
                     "next_episode_s": later, "peak_rss_mb": _peak_rss_mb()})
        print(f"{spec.name} workflow, {name}: first episode {times[0]:.2f} s, next "
              f"{later:.2f} s each ({len(times) - 1} more, "
              f"{args.n_observational}+{args.n_interventions} samples)", flush=True)
    return rows


def bench_ceiling(args) -> "pd.DataFrame":
    """How much can the choice of intervention gain over steps 1..T at all?

    Runs, on the same cells as the Phase-2 sweep (``--base-seed``, default 0, as the sweep's;
    the evaluation's 2,000,000,000 gives its cells): random, max-uncertainty, the
    expected-gain oracle (best one-step chooser for the Phase-1 reward, knowing the true SCM),
    the same chooser on a plug-in SCM fitted to the data (no truth) and, with
    ``--grpo-checkpoint``, the trained policy; prints F1-AUC over steps 1..T and the
    paired difference to random with its one-sided p-value. Above the exact posterior's size
    both choosers score candidates with the MCMC posterior's what-if updates, the oracle every
    variable, the plug-in chooser its shortlist (as ``plugin_active`` acts).
    """
    import functools

    import numpy as np
    import pandas as pd

    from causal_grpo import io
    from causal_grpo import surrogate_bayes as B
    from causal_grpo.active_learning import (Method, make_batch_runner,
                                             make_expected_gain_selector,
                                             make_plugin_gain_selector, make_reference_runner,
                                             method_id)
    from causal_grpo.results import f1_auc, paired_p
    from causal_grpo.scm_families import FamilyConfig, resolve_scm
    from causal_grpo.sweep import cell_batch

    policy = None
    if args.grpo_checkpoint:
        from causal_grpo.checkpoint import load_grpo_policy
        from causal_grpo.policy import episode_selector, policy_handle
        policy = policy_handle(load_grpo_policy(args.grpo_checkpoint))
    from causal_grpo.surrogate import SurrogateConfig
    from jobs.two_phase_training import episode_config
    batch = min(args.batch_size or args.seeds, args.seeds)
    exact_max = B.AnalyticConfig().exact_max_d
    if len(set(args.scms)) != len(args.scms):
        raise UserError(f"--scms lists an SCM twice: {','.join(args.scms)}")
    sources = {name: resolve_scm(name) for name in args.scms}
    # Each SCM's episode as the Phase-2 sweep runs it (dense<d>: its protocol's observational
    # samples and every parent set scored), so that the rows are the sweep's cells.
    episodes = {name: episode_config({name: src}, args.n_observational, args.n_interventions,
                                     SurrogateConfig())
                for name, src in sources.items()}
    # From the source, not a drawn SCM: drawing one of er100000000 never returns.
    dims = {name: src.padded if isinstance(src, FamilyConfig) else src.d
            for name, src in sources.items()}
    for name, d in dims.items():
        if 12 < d <= exact_max:
            # Each decision is d * 2 * draws exact-posterior updates, all vmapped over a batch:
            # at d = 15 that is ~48 GB and ~45 minutes for 30 seeds. Above the exact DP's size
            # they are updates of the MCMC posterior's what-if stand-in (~0.4 GB per seed at
            # d = 100 with one draw).
            raise UserError(f"ceiling: '{name}' has {d} variables; the expected-gain references "
                            f"run up to 12 and above {exact_max}")
        if d > exact_max:
            # Measured at d = 100 with one draw: ~0.4 GB per seed of a batch (the oracle's 2d
            # what-if updates per decision, vmapped), taken to grow as d^2 x draws.
            need = int(0.4e9 * (d / 100) ** 2 * args.draws * batch)
        else:
            # The oracle's 2d x draws exact updates per decision, vmapped: measured at 16 draws
            # (peak RSS, 4 to 16 seeds) 1.1 GB plus 0.11 GB per seed at d = 10 and 0.37 at
            # d = 12, 0.36 and 0.29 of what posterior_bytes counts for them.
            analytic = episodes[name].surrogate.analytic or B.AnalyticConfig()
            need = int(1.1e9 + 0.4 * B.posterior_bytes(analytic, d, 2 * d * args.draws * batch))
        if need > io.available_memory_bytes():
            raise UserError(
                f"ceiling: '{name}' would need about {io.format_bytes(need)} of memory "
                f"(--batch-size {batch} x --draws {args.draws} at {d} variables) "
                f"and this machine has {io.format_bytes(io.available_memory_bytes())} "
                "available: lower --batch-size or --draws")
    # With --out, each SCM's rows (and each batch of its seeds) are kept in FILE.rows/ as they
    # finish: a rerun of the same command (same settings, code and policy) goes on from there.
    store = io.ensure_writable_dir(args.out + ".rows", exclusive=True) if args.out else None
    if store:
        io.drop_stale_partials(store)
    from jobs.bench_scale import settings_digest
    rows = []
    for name, d in dims.items():
        path = store and os.path.join(store, settings_digest(
            args, ("cmd", "out", "scms", "grpo_checkpoint"),
            {"scm": name, "policy": policy.digest if policy else None}) + ".json")
        kept = _kept_ceiling_rows(path)
        if kept is not None:
            rows += kept
            for r in kept:
                print(f"{name:8s} {r['method']:22s} F1-AUC 1-{args.n_interventions} "
                      f"{r['f1_auc']:.3f}  delta {r['delta']:+.3f}  p {r['p']:.2g}  (kept)",
                      flush=True)
            continue
        cfg = episodes[name]
        builtin = make_batch_runner(cfg, d)

        def reference(i):
            return lambda k, s: builtin(k, s, None, i)

        runners = {m.value: reference(method_id(m)) for m in (Method.RANDOM, Method.UNCERTAINTY)}
        if policy is not None:
            acting = make_batch_runner(cfg, d, episode_selector(policy, cfg.surrogate.analytic))
            runners["grpo_active"] = lambda k, s: acting(k, s, policy.params, 0)
        runners["expected_gain_oracle"] = make_reference_runner(
            cfg, d, functools.partial(make_expected_gain_selector, n_draws=args.draws))
        runners["plugin_expected_gain"] = make_reference_runner(
            cfg, d, functools.partial(make_plugin_gain_selector, n_draws=args.draws))
        f1 = {m: [] for m in runners}
        oracle_s = 0.0
        batch_paths = []
        for lo in range(0, args.seeds, batch):
            seeds = range(lo, min(args.seeds, lo + batch))
            # Each finished batch is kept too: an SCM at d = 100 takes tens of minutes.
            batch_path = path and f"{path[:-len('.json')]}.seeds{lo}-{seeds[-1]}.json"
            batch_paths.append(batch_path)
            done_batch = _kept_ceiling_batch(batch_path, list(runners), len(seeds),
                                             args.n_interventions + 1)
            if done_batch is not None:
                for m in runners:
                    f1[m].append(done_batch[m])
                continue
            scms, keys = cell_batch(sources[name], args.base_seed, seeds)
            computed = {}
            for m, run in runners.items():
                t0 = time.time()
                computed[m] = np.asarray(run(keys, scms).record.f1)
                if m == "expected_gain_oracle":
                    oracle_s += time.time() - t0
            if batch_path:
                io.write_json(batch_path, {m: {"dtype": str(a.dtype), "f1": a.tolist()}
                                           for m, a in computed.items()})
            for m, a in computed.items():
                f1[m].append(a)
        auc = {m: f1_auc(np.concatenate(v)) for m, v in f1.items()}
        done = []
        for m, a in auc.items():
            diff = a - auc["random_active"]
            p = paired_p(diff) if m != "random_active" else float("nan")
            done.append({"scm": name, "method": m, "f1_auc": float(a.mean()),
                         "delta": float(diff.mean()), "p": float(p), "seeds": args.seeds})
            print(f"{name:8s} {m:22s} F1-AUC 1-{args.n_interventions} {a.mean():.3f}  "
                  f"delta {diff.mean():+.3f}  p {p:.2g}", flush=True)
        print(f"{name}: oracle {oracle_s:.0f} s in the batches computed by this run "
              f"({args.draws} draws per candidate)", flush=True)
        if path:
            with io.one_update():
                io.write_json(path, done)
                for batch_path in batch_paths:
                    io.remove(batch_path)
        rows += done
    return pd.DataFrame(rows)


def _kept_ceiling_batch(path: str | None, methods: list[str], seeds: int, steps: int
                        ) -> dict | None:
    """A batch's per-seed F1 curves kept at ``path`` ({method: (seeds, steps) array}), or
    None. The values come back in their computed dtype, so the table is the same bit for bit."""
    import numpy as np

    from jobs.bench_scale import kept

    def valid(found) -> bool:
        if not isinstance(found, dict) or set(found) != set(methods):
            return False
        try:
            return all(np.asarray(v["f1"], dtype=v["dtype"]).shape == (seeds, steps)
                       for v in found.values())
        except (TypeError, ValueError, KeyError):
            return False

    found = kept(path, valid)
    return None if found is None else {m: np.asarray(v["f1"], dtype=v["dtype"])
                                       for m, v in found.items()}


def _kept_ceiling_rows(path: str | None) -> list[dict] | None:
    """An SCM's rows kept at ``path``, in the columns' computed order, or None."""
    from jobs.bench_scale import kept

    columns = ("scm", "method", "f1_auc", "delta", "p", "seeds")
    rows = kept(path, lambda rows: isinstance(rows, list) and bool(rows) and all(
        isinstance(r, dict) and set(r) == set(columns) for r in rows))
    return None if rows is None else [{k: r[k] for k in columns} for r in rows]


def posterior_update_parts(d: int, n: int, rows: int = 40) -> tuple[dict, "jax.Array"]:
    """One exact posterior update of ``n`` posteriors (jitted, vmapped) in its three parts.

    Returns name -> (fn, args) for ``merge`` (the last of ``rows`` + 1 rows into the
    statistics of the others), ``local_scores`` and ``dp``, and the data (n, rows + 1, d).
    Each part's args are ready-made inputs of its size; fed each other's outputs in this
    order, the parts are one update of the analytic surrogate.
    """
    import jax
    import jax.numpy as jnp

    from causal_grpo import surrogate_bayes as B

    cfg = B.AnalyticConfig()
    tab = B.build_tables(d, cfg.max_indegree)
    vals = jax.random.normal(jax.random.PRNGKey(0), (n, rows + 1, d))
    no = jnp.zeros((rows, d), bool)
    stats = jax.vmap(lambda v: B.add_rows(B.empty_stats(d), v, no, jnp.ones((rows,), bool))
                     )(vals[:, :rows])
    mask = jnp.ones((d,), bool)
    merge = jax.jit(jax.vmap(lambda s, v: B.add_rows(s, v[None], no[:1], jnp.ones((1,), bool))))
    local = jax.jit(jax.vmap(lambda s: B.local_scores(s, mask, tab, cfg.penalty)))
    dp = jax.jit(jax.vmap(lambda sc: B.exact_parent_posterior(sc, tab)))
    scores = jax.block_until_ready(local(stats))
    return {"merge": (merge, (stats, vals[:, -1])), "local_scores": (local, (stats,)),
            "dp": (dp, (scores,))}, vals


def bench_posterior(args) -> "pd.DataFrame":
    """Milliseconds per exact posterior update (vmapped over ``--batch`` posteriors), split
    into merging one sample into the statistics, the local scores and the DP over orders."""
    import jax
    import pandas as pd

    from causal_grpo import surrogate_bayes as B

    exact_max = B.AnalyticConfig().exact_max_d
    bad = [d for d in args.d if not 2 <= d <= exact_max]
    if bad:
        raise UserError(f"posterior: --d must lie in [2, {exact_max}] (the exact DP), got {bad}")
    for d in args.d:
        B.check_fits(B.AnalyticConfig(), d, args.batch)
    rows = []
    for d in args.d:
        n = args.batch
        parts, _ = posterior_update_parts(d, n)
        row = {"d": d, "batch": n}
        for name, (fn, a) in parts.items():
            jax.block_until_ready(fn(*a))                      # compile
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                jax.block_until_ready(fn(*a))
                reps += 1
            row[f"{name}_ms"] = (time.perf_counter() - t0) / reps / n * 1e3
        total = row["merge_ms"] + row["local_scores_ms"] + row["dp_ms"]
        row.update(total_ms=total, updates_per_s=1e3 / total, dp_share=row["dp_ms"] / total)
        rows.append(row)
        print(f"d={d:2d}: {total:.3f} ms per update ({1e3 / total:,.0f}/s): merge "
              f"{row['merge_ms']:.3f}, local scores {row['local_scores_ms']:.3f}, "
              f"DP {row['dp_ms']:.3f} ({100 * row['dp_share']:.0f}%)", flush=True)
    return pd.DataFrame(rows)


# The Phase-2 methods compared; the last two need --grpo-checkpoint.
DEVICE_METHODS = ("random_active", "uncertainty_active", "observational", "plugin_active",
                  "grpo_active", "grpo_bootstrap")


def device_differences(cfg, first, second, policy=None) -> list[dict]:
    """Every cell of ``cfg`` (a ``SweepConfig`` of :data:`DEVICE_METHODS`; ``policy``: the
    ``PolicyHandle`` of its ``grpo_*`` methods) computed on device ``first`` and on ``second``;
    per (scm, method): seeds whose SCM came out differently, how often the two chose the same
    intervention, how many seeds ever chose differently, and how far F1, expected SHD and the
    final edge probabilities lie apart."""
    import jax
    import numpy as np

    from causal_grpo import sweep
    from causal_grpo.results import f1_auc

    batches = sweep.plan_batches(cfg)
    runs = []
    for device in (first, second):
        with jax.default_device(device):
            runs.append([sweep.run_batch(b, cfg, policy) for b in batches])
    rows = []
    for scm in cfg.scms:
        for method in cfg.methods:
            idx = [i for i, b in enumerate(batches) if b.scm == scm and b.method is method]
            a, b = ({k: np.concatenate([run[i][k] for i in idx]) for k in run[idx[0]]}
                    for run in runs)
            scm_differs = ((a["true_adj"] != b["true_adj"]).any(axis=(1, 2))
                           | (a["target"] != b["target"]))
            close = np.abs(a["value"] - b["value"]) <= 1e-4 * np.maximum(1, np.abs(a["value"]))
            same = (a["variable"] == b["variable"]) & close
            gap = {k: float(np.abs(a[k] - b[k]).max()) for k in ("f1", "expected_shd",
                                                                 "final_probs")}
            rows.append({
                "scm": scm, "method": method.value, "seeds": len(a["seed"]),
                "scm_differs": int(scm_differs.sum()),
                "same_choice": float(same[:, 1:].mean()),
                "seeds_choosing_differently": int((~same[:, 1:]).any(axis=1).sum()),
                "f1_max_diff": gap["f1"], "expected_shd_max_diff": gap["expected_shd"],
                "final_prob_max_diff": gap["final_probs"],
                "final_edges_across_half": int(((a["final_probs"] > 0.5)
                                                != (b["final_probs"] > 0.5)).sum()),
                "f1_auc_first": float(f1_auc(a["f1"]).mean()),
                "f1_auc_second": float(f1_auc(b["f1"]).mean())})
    return rows


def bench_devices(args) -> "pd.DataFrame":
    """The same Phase-2 cells on the CPU and on this machine's accelerator (GPU or TPU): their
    SCMs, choices and numbers side by side. Last bits differ between devices; a choice or an
    edge that differs says by how much that moved an episode."""
    import jax
    import pandas as pd

    from causal_grpo.active_learning import Method
    from causal_grpo.scm_families import resolve_scm
    from causal_grpo.surrogate import SurrogateConfig
    from causal_grpo.sweep import SweepConfig
    from jobs.two_phase_training import episode_config

    if len(set(args.scms)) != len(args.scms):
        raise UserError(f"--scms lists an SCM twice: {','.join(args.scms)}")
    methods = tuple(Method(m) for m in args.methods or (
        "random_active", "plugin_active", *(("grpo_active",) if args.grpo_checkpoint else ())))
    needing = [m.value for m in methods if m.needs_policy]
    if needing and not args.grpo_checkpoint:
        raise UserError(f"devices: {', '.join(needing)} needs --grpo-checkpoint DIR")
    if args.grpo_checkpoint and not needing:
        raise UserError("devices: --grpo-checkpoint is used only by grpo_active and "
                        "grpo_bootstrap, and --methods lists neither")
    sources = {name: resolve_scm(name) for name in args.scms}
    policy = None
    if args.grpo_checkpoint:
        from causal_grpo.checkpoint import load_grpo_policy
        from causal_grpo.policy import policy_handle
        policy = policy_handle(load_grpo_policy(args.grpo_checkpoint))
        # On the host, so that each device's program takes the weights onto its own device.
        policy = policy._replace(params=jax.device_get(policy.params))
    accelerator = jax.devices()[0]
    if accelerator.platform == "cpu":
        raise UserError("devices: JAX sees no accelerator here (only the CPU); this subcommand "
                        "compares an accelerator's Phase-2 cells with the CPU's")
    try:
        cpu = jax.devices("cpu")[0]
    except RuntimeError:
        raise UserError("devices: JAX's CPU backend is off here (JAX_PLATFORMS leaves it out); "
                        "add cpu to JAX_PLATFORMS or unset it") from None
    print(f"cpu against {accelerator.device_kind} ({accelerator.platform})", flush=True)
    rows = []
    for name, src in sources.items():
        # Each SCM's episode as the Phase-2 sweep runs it (dense<d>: its protocol).
        cfg = SweepConfig(scms=(name,), methods=methods,
                          seeds=args.seeds, base_seed=args.base_seed, batch_size=args.seeds,
                          episode=episode_config({name: src}, args.n_observational,
                                                 args.n_interventions, SurrogateConfig()))
        for r in device_differences(cfg, cpu, accelerator, policy):
            rows.append(r)
            print(f"{r['scm']:8s} {r['method']:18s} SCMs differing {r['scm_differs']}; same "
                  f"choice {r['same_choice']:.3f} (seeds choosing differently "
                  f"{r['seeds_choosing_differently']} of {r['seeds']}); max |diff| F1 "
                  f"{r['f1_max_diff']:.2e}, expected SHD {r['expected_shd_max_diff']:.2e}, "
                  f"final edge probability {r['final_prob_max_diff']:.2e} "
                  f"({r['final_edges_across_half']} across 0.5); F1-AUC "
                  f"{r['f1_auc_first']:.4f} / {r['f1_auc_second']:.4f}", flush=True)
    return pd.DataFrame(rows)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("gies", help="exact DAG posterior vs GIES on ER graphs")
    g.add_argument("--d", type=list_of(positive_int("--d", 3, 1000), distinct=True),
                   default=[10, 15])
    g.add_argument("--budgets", type=list_of(positive_int("--budgets", 0), distinct=True),
                   default=[0, 10, 25, 50, 100])
    g.add_argument("--degree", type=list_of(positive_float("--degree", allow_zero=True), 2,
                                            ordered=True),
                   default=[2.0, 3.0],
                   help="expected-degree range lo,hi (each graph draws its degree from it)")
    g.add_argument("--seeds", type=positive_int("--seeds"), default=10)
    g.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    g.add_argument("--base-seed", type=seed_int("--base-seed"), default=0)

    q = sub.add_parser("phase2", help="Phase-2 runs per second")
    q.add_argument("--scm", default="hard")
    q.add_argument("--surrogates", type=list_of(_surrogate, distinct=True),
                   default=["analytic", "neural"])
    q.add_argument("--seeds", type=positive_int("--seeds"), default=64)
    q.add_argument("--neural-seeds", type=positive_int("--neural-seeds"), default=64)
    q.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    q.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=50)
    q.add_argument("--repeats", type=positive_int("--repeats"), default=3)
    q.add_argument("--workflow-episodes", type=positive_int("--workflow-episodes", 0, 1000), default=3,
                   help="episodes of the seed document's Python workflow (run_active_learning, "
                        "one step at a time) to time, the first with its compiles; 0: none")
    q.add_argument("--grpo-checkpoint", default=None,
                   help="also time the workflow driven by this policy "
                        "(create_grpo_intervention_fn, a new one per episode)")

    c = sub.add_parser("ceiling", help="expected-gain oracle vs random, uncertainty, a policy")
    c.add_argument("--scms", type=comma_list, default=["easy", "medium", "hard", "er10"])
    c.add_argument("--grpo-checkpoint", default=None)
    c.add_argument("--seeds", type=positive_int("--seeds"), default=30)
    c.add_argument("--draws", type=positive_int("--draws"), default=16)
    c.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=None,
                   help="default: the family's protocol (dense<d>: 50), else 30")
    c.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=10)
    c.add_argument("--base-seed", type=seed_int("--base-seed"), default=0)
    c.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="seeds per vmapped batch (default: all; at d = 50-100 ~0.4 GB per seed "
                        "and draw)")

    e = sub.add_parser("posterior", help="where an exact posterior update's time goes")
    e.add_argument("--d", type=list_of(positive_int("--d"), distinct=True),
                   default=[5, 8, 10, 12, 15])
    e.add_argument("--batch", type=positive_int("--batch"), default=64,
                   help="posteriors updated per vmapped call")
    e.add_argument("--seconds", type=positive_float("--seconds"), default=3.0,
                   help="timing per part and d")

    v = sub.add_parser("devices", help="the same Phase-2 cells on the CPU and the accelerator")
    v.add_argument("--scms", type=comma_list, default=["er10", "er15", "hard", "er20"])
    v.add_argument("--methods", type=list_of(_device_method, distinct=True), default=None,
                   help="default: random_active, plugin_active, and grpo_active with "
                        "--grpo-checkpoint")
    v.add_argument("--grpo-checkpoint", default=None,
                   help="the policy of the grpo_* methods (acting as in the Phase-2 sweep: "
                        "sampled, lookahead draws auto)")
    v.add_argument("--seeds", type=positive_int("--seeds"), default=8)
    v.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=None,
                   help="default: the family's protocol (dense<d>: 50), else 30")
    v.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=10)
    v.add_argument("--base-seed", type=seed_int("--base-seed"), default=0)

    from jobs.bench_scale import add_parser as add_scale
    add_scale(sub, comma_list, positive_int,
              list_of(positive_float("--degree", allow_zero=True), 2, ordered=True))

    sub.add_parser("phase1", help="Phase-1 candidate evaluations per second, default curriculum")
    r = sub.add_parser("ray", help="Phase-2 sweep time on 0, 1, 2 Ray workers")
    # At most an hour: its cells are planned as batch objects before anything is measured
    # (1e6 s, the generic bound, planned 1.5 million of them).
    r.add_argument("--seconds", type=positive_float("--seconds", maximum=3600.0), default=60.0,
                   help="sizes each Phase-2 measurement: 100 cells per second given (about "
                        "38 cells/s in-process on 2 cores, so ~2.6x as long there); at most 3600")
    r.add_argument("--workers", type=list_of(positive_int("--workers", 0), distinct=True),
                   default=[0, 1, 2])
    from jobs.bench_eval import add_parser as add_eval_parser
    add_eval_parser(sub)
    for sp in sub.choices.values():
        sp.add_argument("--out", default=None, help="also write the table as CSV")
    return p


def _surrogate(text: str) -> str:
    if text not in ("analytic", "neural"):
        raise argparse.ArgumentTypeError(f"unknown surrogate {text!r} (choose analytic, neural)")
    return text


def _device_method(text: str) -> str:
    if text not in DEVICE_METHODS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(DEVICE_METHODS)}")
    return text


def _check_memory(args) -> None:
    """gies, phase2, scale, devices and (unless --batch-size) ceiling run all seeds of a graph
    in one vmapped batch."""
    if args.cmd == "phase2":    # one batch per surrogate, each with its own seeds
        from causal_grpo import surrogate_bayes
        from causal_grpo.scm_families import resolve_scm
        d = resolve_scm(args.scm).d
        for kind in args.surrogates:
            flag, seeds = (("--seeds", args.seeds) if kind == "analytic"
                           else ("--neural-seeds", args.neural_seeds))
            need = phase2_memory_bytes(d, seeds, args.n_observational, args.n_interventions,
                                       seeds, kind == "neural")
            refuse_oversized(need, {flag: (seeds, 64),
                                    "--n-observational": (args.n_observational, 30),
                                    "--n-interventions": (args.n_interventions, 50)},
                             f"{seeds} {kind} runs of {args.n_interventions + 1} steps at d = {d}")
            if kind == "analytic":
                surrogate_bayes.check_fits(surrogate_bayes.AnalyticConfig(), d, seeds)
        return
    steps = max(getattr(args, "budgets", None) or [args.n_interventions])
    d = max(getattr(args, "d", None) or getattr(args, "dims", None) or [2])
    if args.cmd == "devices":   # all seeds of an SCM in one batch
        from causal_grpo.scm_families import resolve_scm
        d = max(resolve_scm(name).d for name in args.scms)
    if args.cmd == "gies":     # all seeds' posteriors at once (scale checks its own)
        from causal_grpo import surrogate_bayes
        surrogate_bayes.check_fits(surrogate_bayes.AnalyticConfig(), d, args.seeds)
    n_obs = args.n_observational or 50      # ceiling without the flag: at most a protocol's 50
    need = phase2_memory_bytes(d, args.seeds, n_obs, steps, args.seeds)
    refuse_oversized(need, {"--seeds": (args.seeds, 30), "--n-observational": (n_obs, 30),
                            "--n-interventions" if hasattr(args, "n_interventions") else "--budgets":
                            (steps, 50)}, f"{args.seeds} seeds x {steps + 1} steps")


@user_errors_exit_2(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from causal_grpo import io
    # A run refused by a later check leaves no directory that --out's check created.
    made = [os.path.dirname(os.path.abspath(args.out))] if args.out is not None else []
    with io.no_new_dirs_if_refused(*made, *filter(None, [getattr(args, "output_dir", None)])):
        df = _run(args)
    if args.out is not None:
        io.write_atomic(args.out, lambda p: df.to_csv(p, index=False))
    return 0


def _run(args) -> "pd.DataFrame":
    """``main`` without writing ``--out``: its checks, then the subcommand's table."""
    from causal_grpo import io
    if args.out is not None:    # a table that cannot be written is refused now, not after the run
        if args.cmd == "eval" and os.path.abspath(args.out).startswith(
                os.path.join(os.path.abspath(args.output_dir), "")):
            raise UserError(f"--out {args.out} is inside --output-dir, where eval writes its own "
                            "tables (a rerun would take it for another job's file); write it "
                            "elsewhere")
        io.check_output_file(args.out, "--out")
    if args.cmd in ("gies", "phase2", "ceiling", "scale", "devices"):
        _check_memory(args)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}", flush=True)
    # Subcommand -> (module, function); the heavy modules are imported only when chosen.
    runners = {"gies": (__name__, "bench_gies"), "phase2": (__name__, "bench_phase2"),
               "ceiling": (__name__, "bench_ceiling"), "posterior": (__name__, "bench_posterior"),
               "devices": (__name__, "bench_devices"),
               "eval": ("jobs.bench_eval", "bench_eval"), "scale": ("jobs.bench_scale", "bench_scale"),
               "phase1": ("jobs.bench_grpo", "bench_phase1"), "ray": ("jobs.bench_ray", "bench_ray")}
    module, function = runners[args.cmd]
    return getattr(importlib.import_module(module), function)(args)


if __name__ == "__main__":
    run_script(main)
