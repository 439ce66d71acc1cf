"""Benchmarks that print the numbers quoted in the README (each subcommand prints a table).

    python -m jobs.benchmark gies        # analytic surrogate vs GIES on random ER graphs
    python -m jobs.benchmark phase2      # Phase-2 throughput (runs/s), compile time, peak memory
    python -m jobs.benchmark phase1      # Phase-1 candidate evaluations per second
    python -m jobs.benchmark ray         # in-process vs 1 vs 2 Ray workers (Phase 1 and 2)
    python -m jobs.benchmark ceiling     # the best one-step chooser (knows the SCM) vs the rest
    python -m jobs.benchmark posterior   # where one exact posterior update's time goes, per d
    python -m jobs.benchmark scale       # posterior speed, memory, accuracy vs GIES, d = 10..100

Every subcommand takes ``--out FILE`` to also write its table as CSV.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from jobs._cli import ArgumentParser, comma_list, positive_int, user_errors_exit_2

PROG = "benchmark"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gies_fit(values, intervened):
    """GIES (BIC) on the same rows, grouped into environments by intervention target."""
    import gies
    import numpy as np

    groups: dict[tuple, list] = {}
    for x, m in zip(values, intervened):
        groups.setdefault(tuple(np.flatnonzero(m)), []).append(x)
    keys = sorted(groups)
    est, _ = gies.fit_bic([np.asarray(groups[k]) for k in keys], [list(k) for k in keys])
    return (est != 0).astype(int)


def bench_gies(args) -> "pd.DataFrame":
    """Mean final F1/SHD of the exact posterior vs GIES on identical data, per (d, budget)."""
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd

    from causal_grpo import metrics as M
    from causal_grpo.active_learning import EpisodeConfig, Method, make_batch_runner, method_id
    from causal_grpo.results import mean_ci
    from causal_grpo.scm import stack_scms
    from causal_grpo.scm_families import FamilyConfig, GraphKind
    from causal_grpo.sweep import cell_scm_and_key

    rows = []
    for d in args.d:
        src = FamilyConfig(kind=GraphKind.ER, d=d, expected_degree=tuple(args.degree))
        pairs = [cell_scm_and_key(src, args.base_seed, s) for s in range(args.seeds)]
        scms = stack_scms([p[0] for p in pairs])
        keys = jnp.stack([p[1] for p in pairs])
        for budget in args.budgets:
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
                    row[f"{name}_{m}"], row[f"{name}_{m}_ci95"] = mu, ci
            row["gies_seconds_per_fit"] = t_gies / args.seeds
            rows.append(row)
            print(f"d={d:2d} T={budget:3d}  exact-posterior F1 {row['ours_f1']:.3f} SHD {row['ours_shd']:5.2f}"
                  f"   GIES F1 {row['gies_f1']:.3f} SHD {row['gies_shd']:5.2f}", flush=True)
    df = pd.DataFrame(rows)
    print()
    print("| d | interventions | seeds | exact posterior F1 | GIES F1 | exact posterior SHD | GIES SHD |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for _, r in df.iterrows():
        f1_note = " (F1 n/a: GIES is undirected)" if r["interventions"] == 0 else ""
        print(f"| {int(r['d'])} | {int(r['interventions'])} | {int(r['seeds'])} | {r['ours_f1']:.3f} ± {r['ours_f1_ci95']:.3f} "
              f"| {r['gies_f1']:.3f} ± {r['gies_f1_ci95']:.3f}{f1_note} | {r['ours_shd']:.2f} ± {r['ours_shd_ci95']:.2f} "
              f"| {r['gies_shd']:.2f} ± {r['gies_shd_ci95']:.2f} |")
    return df


def bench_phase2(args) -> "pd.DataFrame":
    """Complete Phase-2 runs per second with many seeds vmapped, per surrogate; compile apart."""
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from causal_grpo.active_learning import EpisodeConfig, Method, make_batch_runner, method_id
    from causal_grpo.scm import stack_scms
    from causal_grpo.scm_families import resolve_scm
    from causal_grpo.surrogate import SurrogateConfig, SurrogateKind

    rows = []
    spec = resolve_scm(args.scm)
    for kind in args.surrogates:
        seeds = args.seeds if kind == "analytic" else args.neural_seeds
        cfg = EpisodeConfig(n_observational=args.n_observational, n_interventions=args.n_interventions,
                            surrogate=SurrogateConfig(kind=SurrogateKind(kind)))
        run = make_batch_runner(cfg, spec.d)
        scms = stack_scms([spec.to_scm()] * seeds)
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(0), s))(jnp.arange(seeds))
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
               "runs_per_s": seeds / best, "ms_per_run": 1000 * best / seeds,
               "posteriors_per_s": seeds * (args.n_interventions + 1) / best,
               "peak_rss_mb": _peak_rss_mb()}
        rows.append(row)
        print(f"{spec.name} random_active surrogate={kind}: {row['runs_per_s']:.1f} runs/s "
              f"({seeds} seeds vmapped, {args.n_observational}+{args.n_interventions} samples), "
              f"compile {compile_s:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    return pd.DataFrame(rows)


def bench_ceiling(args) -> "pd.DataFrame":
    """How much can the choice of intervention gain over steps 1..T at all?

    Runs, on the same cells as the Phase-2 sweep (base seed 0): random, max-uncertainty, the
    expected-gain oracle (best one-step chooser for the Phase-1 reward, knowing the true SCM),
    the same chooser on a plug-in SCM fitted to the data (no truth) and, with
    ``--grpo-checkpoint``, the trained policy; prints F1-AUC over steps 1..T and the
    paired difference to random with its one-sided p-value.
    """
    import functools

    import jax.numpy as jnp
    import numpy as np
    import pandas as pd
    from scipy import stats

    from causal_grpo.active_learning import (EpisodeConfig, Method, make_batch_runner,
                                             make_expected_gain_selector,
                                             make_plugin_gain_selector, make_reference_runner,
                                             method_id)
    from causal_grpo.errors import UserError
    from causal_grpo.scm import stack_scms
    from causal_grpo.scm_families import resolve_scm
    from causal_grpo.sweep import cell_scm_and_key

    policy = None
    if args.grpo_checkpoint:
        from causal_grpo.checkpoint import load_grpo_policy, policy_handle
        policy = policy_handle(load_grpo_policy(args.grpo_checkpoint))
    cfg = EpisodeConfig(n_observational=args.n_observational, n_interventions=args.n_interventions)
    for name in args.scms:
        d = cell_scm_and_key(resolve_scm(name), 0, 0)[0].adj.shape[-1]
        if d > 12:
            # Each decision is d * 2 * draws exact-posterior updates, all vmapped over seeds: at
            # d = 15 that is ~48 GB and ~45 minutes for 30 seeds.
            raise UserError(f"ceiling: '{name}' has {d} variables; the expected-gain references "
                            "run only up to 12")
    rows = []
    for name in args.scms:
        src = resolve_scm(name)
        pairs = [cell_scm_and_key(src, 0, s) for s in range(args.seeds)]
        scms = stack_scms([p[0] for p in pairs])
        keys = jnp.stack([p[1] for p in pairs])
        d = scms.adj.shape[-1]
        builtin = make_batch_runner(cfg, d)
        f1 = {m.value: builtin(keys, scms, None, method_id(m)).record.f1
              for m in (Method.RANDOM, Method.UNCERTAINTY)}
        if policy is not None:
            f1["grpo_active"] = make_batch_runner(cfg, d, policy.selector)(
                keys, scms, policy.params, 0).record.f1
        t0 = time.time()
        oracle = functools.partial(make_expected_gain_selector, n_draws=args.draws)
        f1["expected_gain_oracle"] = make_reference_runner(cfg, d, oracle)(keys, scms).record.f1
        oracle_s = time.time() - t0
        plugin = functools.partial(make_plugin_gain_selector, n_draws=args.draws)
        f1["plugin_expected_gain"] = make_reference_runner(cfg, d, plugin)(keys, scms).record.f1
        auc = {m: np.asarray(v)[:, 1:].mean(1) for m, v in f1.items()}
        for m, a in auc.items():
            diff = a - auc["random_active"]
            p = (stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue
                 if m != "random_active" else float("nan"))
            rows.append({"scm": name, "method": m, "f1_auc": a.mean(), "delta": diff.mean(),
                         "p": p, "seeds": args.seeds})
            print(f"{name:8s} {m:22s} F1-AUC 1-{args.n_interventions} {a.mean():.3f}  "
                  f"delta {diff.mean():+.3f}  p {p:.2g}", flush=True)
        print(f"{name}: oracle {oracle_s:.0f} s ({args.draws} draws per candidate)", flush=True)
    return pd.DataFrame(rows)


def bench_posterior(args) -> "pd.DataFrame":
    """Milliseconds per exact posterior update (vmapped over ``--batch`` posteriors), split
    into merging one sample into the statistics, the local scores and the DP over orders."""
    import jax
    import jax.numpy as jnp
    import pandas as pd

    from causal_grpo import surrogate_bayes as B
    from causal_grpo.errors import UserError

    exact_max = B.AnalyticConfig().exact_max_d
    bad = [d for d in args.d if not 2 <= d <= exact_max]
    if bad:
        raise UserError(f"posterior: --d must lie in 2..{exact_max} (the exact DP), got {bad}")
    rows = []
    for d in args.d:
        tab = B.build_tables(d, B.AnalyticConfig().max_indegree)
        n, rows_per = args.batch, 40
        vals = jax.random.normal(jax.random.PRNGKey(0), (n, rows_per + 1, d))
        no = jnp.zeros((rows_per, d), bool)
        stats = jax.vmap(lambda v: B.add_rows(B.empty_stats(d), v, no, jnp.ones((rows_per,), bool))
                         )(vals[:, :rows_per])
        mask = jnp.ones((d,), bool)
        merge = jax.jit(jax.vmap(lambda s, v: B.add_rows(s, v[None], no[:1], jnp.ones((1,), bool))))
        local = jax.jit(jax.vmap(lambda s: B.local_scores(s, mask, tab, 1.0)))
        dp = jax.jit(jax.vmap(lambda sc: B.exact_parent_posterior(sc, tab)))
        scores = jax.block_until_ready(local(stats))
        parts = {"merge": (merge, (stats, vals[:, -1])), "local_scores": (local, (stats,)),
                 "dp": (dp, (scores,))}
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


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("gies", help="exact DAG posterior vs GIES on ER graphs")
    g.add_argument("--d", type=lambda s: [int(x) for x in comma_list(s)], default=[10, 15])
    g.add_argument("--budgets", type=lambda s: [int(x) for x in comma_list(s)],
                   default=[0, 10, 25, 50, 100])
    g.add_argument("--degree", type=lambda s: [float(x) for x in comma_list(s)], default=[2.0, 3.0],
                   help="expected-degree range lo,hi (each graph draws its degree from it)")
    g.add_argument("--seeds", type=positive_int("--seeds"), default=10)
    g.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    g.add_argument("--base-seed", type=int, default=0)

    q = sub.add_parser("phase2", help="Phase-2 runs per second")
    q.add_argument("--scm", default="hard")
    q.add_argument("--surrogates", type=comma_list, default=["analytic", "neural"])
    q.add_argument("--seeds", type=positive_int("--seeds"), default=64)
    q.add_argument("--neural-seeds", type=positive_int("--neural-seeds"), default=64)
    q.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    q.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=50)
    q.add_argument("--repeats", type=positive_int("--repeats"), default=3)

    c = sub.add_parser("ceiling", help="expected-gain oracle vs random, uncertainty, a policy")
    c.add_argument("--scms", type=comma_list, default=["easy", "medium", "hard", "er10"])
    c.add_argument("--grpo-checkpoint", default=None)
    c.add_argument("--seeds", type=positive_int("--seeds"), default=30)
    c.add_argument("--draws", type=positive_int("--draws"), default=16)
    c.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    c.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=10)

    e = sub.add_parser("posterior", help="where an exact posterior update's time goes")
    e.add_argument("--d", type=lambda s: [int(x) for x in comma_list(s)], default=[5, 8, 10, 12, 15])
    e.add_argument("--batch", type=positive_int("--batch"), default=64,
                   help="posteriors updated per vmapped call")
    e.add_argument("--seconds", type=float, default=3.0, help="timing per part and d")

    from jobs.bench_scale import add_parser as add_scale
    add_scale(sub, comma_list, positive_int)

    for name in ("phase1", "ray"):
        r = sub.add_parser(name, help=f"{name} benchmark")
        r.add_argument("--seconds", type=float, default=60.0,
                       help="approximate work per measurement")
        r.add_argument("--workers", type=lambda s: [int(x) for x in comma_list(s)], default=[0, 1, 2])
    for sp in sub.choices.values():
        sp.add_argument("--out", default=None, help="also write the table as CSV")
    return p


@user_errors_exit_2(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}", flush=True)
    if args.cmd == "gies":
        df = bench_gies(args)
    elif args.cmd == "phase2":
        df = bench_phase2(args)
    elif args.cmd == "ceiling":
        df = bench_ceiling(args)
    elif args.cmd == "posterior":
        df = bench_posterior(args)
    elif args.cmd == "scale":
        from jobs.bench_scale import bench_scale
        df = bench_scale(args)
    elif args.cmd == "phase1":
        from jobs.bench_grpo import bench_phase1
        df = bench_phase1(args)
    else:
        from jobs.bench_ray import bench_ray
        df = bench_ray(args)
    if args.out:
        from causal_grpo import io
        io.write_atomic(args.out, lambda p: df.to_csv(p, index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
