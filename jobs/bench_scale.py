"""Scaling of the structure posterior: speed, memory and accuracy from d = 10 to 100.

Per family and d: complete ``random_active`` runs (``--n-observational`` + ``--n-interventions``
single-sample interventions, posterior after every sample) for ``--seeds`` seeds vmapped in one
program; their wall time (compilation apart), runs per second and the posterior update time
amortised over the run; peak RSS of the process so far; final F1/SHD of the posterior's graph
and of GIES (``gies.fit_bic``, and the same search with pcalg's per-node centring of the data:
``jobs._gies_fast.fit_bic_pooled``) on the same rows, with GIES's time per fit. Where the
posterior is exact (up to ``--exact-check-max-d`` if given), the same episodes with the
order-MCMC posterior instead, and the mean absolute difference of its final edge marginals
from the exact ones (random interventions do not depend on the posterior, so both see identical
data). Where the MCMC posterior runs, its convergence figure: the mean over seeds of the largest
edge-marginal difference between two chains after the last update (``chain_gap``). With
``--decisions``, the time of one ``grpo_active`` decision (policy forward pass and its
lookahead input, the default architecture's program; untrained weights cost what trained ones
do) and of one ``plugin_active`` decision, at "auto" lookahead draws, amortised over the seeds
vmapped, on the observations after the episodes' last step, with the 1-minute load average
while measured.

With ``--out FILE`` every finished row is also kept in ``FILE.rows/``, keyed by the settings
and the code that measured it: rerunning the same command reprints those rows (marked
"stored") and computes only the rest, so an interrupted run loses at most the row under way.

    python -m jobs.benchmark scale --dims 10,20 --families er
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable

import numpy as np
import pandas as pd


def _run(cfg, d: int, keys, scms):
    """Compile and run one batch of random_active episodes: (result, compile s, run s)."""
    import jax

    from causal_grpo.active_learning import Method, make_batch_runner, method_id

    run = make_batch_runner(cfg, d)
    mid = method_id(Method.RANDOM)
    t0 = time.perf_counter()
    compiled = run.lower(keys, scms, None, mid).compile()
    t1 = time.perf_counter()
    res = jax.block_until_ready(compiled(keys, scms, None, mid))
    return res, t1 - t0, time.perf_counter() - t1


def _decision_ms(post, d: int, keys, scms, buffer, probs, reps: int = 3) -> dict:
    """Amortised ms per ``grpo_active`` and per ``plugin_active`` decision (see module doc)."""
    import os

    import jax
    import jax.numpy as jnp

    from causal_grpo.active_learning import make_plugin_selector, observe
    from causal_grpo.phase1 import Phase1Config, init_params
    from causal_grpo.policy import make_policy_selector, resolve_lookahead_draws
    from causal_grpo.surrogate_bayes import make_analytic_surrogate

    pcfg = Phase1Config()
    params = init_params(pcfg)
    obs = jax.vmap(lambda scm, buf, p: observe(scm, buf, jnp.asarray(0), p))(scms, buffer, probs)
    n = keys.shape[0]
    out = {}
    for name, select in (
            ("grpo", make_policy_selector(pcfg.policy, False, "auto", post)),
            ("plugin", make_plugin_selector(make_analytic_surrogate(post, d),
                                            resolve_lookahead_draws("auto", d)))):
        run = jax.jit(jax.vmap(select, in_axes=(0, 0, None)))
        jax.block_until_ready(run(keys, obs, params))
        times = []
        for r in range(reps):
            ks = jax.vmap(lambda k: jax.random.fold_in(k, r + 1))(keys)
            t0 = time.perf_counter()
            jax.block_until_ready(run(ks, obs, params))
            times.append(time.perf_counter() - t0)
        out[f"ms_per_{name}_decision"] = 1e3 * min(times) / n
    out["load_1min"] = os.getloadavg()[0]
    return out


# Arguments that choose which rows run, not what a row measures.
_NOT_SETTINGS = ("cmd", "out", "families", "dims")


def settings_digest(args, not_settings: tuple[str, ...] = _NOT_SETTINGS, extra: object = None
                    ) -> str:
    """What a row's numbers depend on: every argument but ``not_settings``, ``extra`` (e.g. a
    policy's digest), the library's code (all of it) and the benchmark's own code (this module,
    GIES, the shared helpers)."""
    from causal_grpo.version import library_id, source_id

    here = os.path.dirname(os.path.abspath(__file__))
    files = {}
    for name in ("bench_scale.py", "_gies_fast.py", "benchmark.py"):
        with open(os.path.join(here, name), "rb") as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    settings = {k: v for k, v in vars(args).items() if k not in not_settings}
    # source_id() keys cells; the rows also depend on the tables' statistics (results.py)
    # and, with --decisions, the policy network: every library module counts.
    blob = json.dumps({"settings": settings, "code": source_id(), "library": library_id(),
                       "files": files,
                       **({"extra": extra} if extra is not None else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def printable(line: Callable[[dict], str], row: Any) -> bool:
    """Whether a kept ``row`` has every column its progress ``line`` prints (a hand-damaged
    row is measured again, not a KeyError)."""
    try:
        line(row)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def kept(path: str | None, valid: Callable[[Any], bool]) -> Any:
    """What a benchmark kept at ``path`` (JSON), or None (none kept, or unreadable or not
    ``valid``: then it is measured again)."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if valid(found) else None


def _progress(row: dict, stored: bool) -> str:
    return (f"{row['family']}{row['d']}: {row['s_per_run']:.2f} s/run ({row['runs_per_s']:.2f} "
            f"runs/s, {row['ms_per_update']:.2f} ms/update, compile {row['compile_s']:.0f} s), "
            f"F1 {row['ours_f1']:.3f} SHD {row['ours_shd']:.1f} | on {row['gies_seeds']} seeds: "
            f"F1 {row['ours_on_gies_seeds_f1']:.3f} SHD {row['ours_on_gies_seeds_shd']:.1f}, "
            f"GIES F1 {row['gies_f1']:.3f} SHD {row['gies_shd']:.1f} "
            f"({row['gies_s_per_fit']:.1f} s/fit), pooled GIES F1 {row['gies_pooled_f1']:.3f} "
            f"SHD {row['gies_pooled_shd']:.1f} | MCMC vs exact MAE {row['mcmc_mae']:.4f} "
            f"| chain gap {row['chain_gap']:.2f} | decision ms: grpo "
            f"{row['ms_per_grpo_decision']:.1f}, plugin {row['ms_per_plugin_decision']:.1f} "
            f"(load {row['load_1min']:.1f}) | RSS {row['peak_rss_mb']:.0f} MB"
            + (" (stored)" if stored else ""))


def _checks_mcmc(post, d: int, check_max_d: int | None) -> bool:
    """Whether the row at ``d`` also runs MCMC against the exact DP: wherever the posterior is
    exact, up to ``check_max_d`` if given."""
    return post.exact(d) and (check_max_d is None or d <= check_max_d)


def bench_scale(args) -> pd.DataFrame:
    import jax.numpy as jnp

    from causal_grpo import io
    from causal_grpo import metrics as M
    from causal_grpo.active_learning import EpisodeConfig
    from causal_grpo.scm import stack_scms
    from causal_grpo.scm_families import FamilyConfig, GraphKind
    from causal_grpo.surrogate import SurrogateConfig
    from causal_grpo.surrogate_bayes import AnalyticConfig, Score, check_fits
    from causal_grpo.sweep import cell_scm_and_key
    from jobs.benchmark import _gies_fit, _peak_rss_mb

    knobs = ("max_indegree", "candidates", "chains", "mcmc_steps", "burn_in")
    chosen = {f: getattr(args, f) for f in knobs if getattr(args, f) is not None}
    post = AnalyticConfig(**chosen, **({"score": Score(args.score)} if args.score else {}))
    mcmc = dataclasses.replace(post, exact_max_d=0)

    def episode(analytic):
        return EpisodeConfig(n_observational=args.n_observational,
                             n_interventions=args.n_interventions,
                             surrogate=SurrogateConfig(analytic=analytic))

    n_updates = args.n_interventions + 1
    store = io.ensure_writable_dir(args.out + ".rows", exclusive=True) if args.out else None
    if store:
        io.drop_stale_partials(store)
    digest = settings_digest(args)
    for d in args.dims:
        check_fits(post, d, args.seeds)
    rows = []
    for family in args.families:
        for d in args.dims:
            path = os.path.join(store, f"{family}{d}-{digest}.json") if store else None
            row = kept(path, lambda r: printable(lambda x: _progress(x, stored=True), r))
            if row is not None:
                rows.append(row)
                print(_progress(row, stored=True), flush=True)
                continue
            src = FamilyConfig(kind=GraphKind(family), d=d,
                               expected_degree=tuple(args.degree))
            pairs = [cell_scm_and_key(src, args.base_seed, s) for s in range(args.seeds)]
            scms = stack_scms([p[0] for p in pairs])
            keys = jnp.stack([p[1] for p in pairs])
            res, compile_s, run_s = _run(episode(post), d, keys, scms)
            row = {"family": family, "d": d, "seeds": args.seeds, "posterior": post.describe(d),
                   "compile_s": compile_s, "s_per_run": run_s / args.seeds,
                   "runs_per_s": args.seeds / run_s,
                   "ms_per_update": 1e3 * run_s / (args.seeds * n_updates)}
            # GIES runs on the first --gies-seeds seeds up to --gies-max-d, and ours is also
            # reported on those seeds.
            n_gies = min(args.gies_seeds, args.seeds) if d <= args.gies_max_d else 0
            ours, gies, pooled, t_gies = [], [], [], 0.0
            for s in range(args.seeds):
                adj = np.asarray(scms.adj[s])
                ours.append(M.structure_metrics(adj, M.posterior_graph(res.final_probs[s])))
                if s < n_gies:
                    data = np.asarray(res.buffer.values[s]), np.asarray(res.buffer.intervened[s])
                    t0 = time.perf_counter()
                    gies.append(M.structure_metrics(adj, _gies_fit(*data)))
                    t_gies += time.perf_counter() - t0
                    pooled.append(M.structure_metrics(adj, _gies_fit(*data, pooled=True)))
            for name, vals in (("ours", ours), ("ours_on_gies_seeds", ours[:n_gies]),
                               ("gies", gies), ("gies_pooled", pooled)):
                for m in ("f1", "shd"):
                    row[f"{name}_{m}"] = float(np.mean([float(v[m]) for v in vals] or [np.nan]))
            row["gies_seeds"] = n_gies
            row["gies_s_per_fit"] = t_gies / n_gies if n_gies else float("nan")
            row["mcmc_mae"] = row["mcmc_max_err"] = row["mcmc_f1"] = float("nan")
            if _checks_mcmc(post, d, args.exact_check_max_d):
                res_m, _, _ = _run(episode(mcmc), d, keys, scms)
                if not np.array_equal(np.asarray(res_m.buffer.values), np.asarray(res.buffer.values)):
                    raise AssertionError("exact and MCMC episodes saw different data")
                diff = np.abs(np.asarray(res_m.final_probs) - np.asarray(res.final_probs))
                off = ~np.eye(d, dtype=bool)
                row["mcmc_mae"] = float(diff[:, off].mean())
                row["mcmc_max_err"] = float(diff.max())
                row["mcmc_f1"] = float(np.mean(np.asarray(res_m.record.f1)[:, -1]))
            row["chain_gap"] = float("nan")
            if not post.exact(d):   # the episodes' own chains after their last update
                row["chain_gap"] = float(np.asarray(res.record.chain_gap)[:, -1].mean())
            row["ms_per_grpo_decision"] = row["ms_per_plugin_decision"] = float("nan")
            row["load_1min"] = float("nan")
            if args.decisions:
                row |= _decision_ms(post, d, keys, scms, res.buffer, res.final_probs)
            row["peak_rss_mb"] = _peak_rss_mb()
            rows.append(row)
            if path:    # in the row's own key order, so a resumed table has the same columns
                io.write_text(path, json.dumps(row) + "\n")
            print(_progress(row, stored=False), flush=True)
    df = pd.DataFrame(rows)
    print()
    print(f"posterior: {post.describe(post.exact_max_d)} up to d = {post.exact_max_d}, above "
          f"it {post.describe(post.exact_max_d + 1)}; {args.seeds} seeds vmapped, "
          f"{args.n_observational} + {args.n_interventions} samples")
    print("| graph | s per run | ms per update | F1 | SHD | GIES seeds | F1 on them | GIES F1 "
          "| SHD on them | GIES SHD | GIES s/fit | pooled GIES F1 | pooled GIES SHD | MCMC-exact MAE | chain gap "
          "| ms per grpo decision | ms per plugin decision | peak RSS MB |")
    print("|---" + "|---:" * 17 + "|")
    for _, r in df.iterrows():
        mae = "" if np.isnan(r["mcmc_mae"]) else f"{r['mcmc_mae']:.4f}"
        print(f"| {r['family']}{r['d']} | {r['s_per_run']:.2f} | {r['ms_per_update']:.2f} "
              f"| {r['ours_f1']:.3f} | {r['ours_shd']:.1f} | {r['gies_seeds']} "
              f"| {r['ours_on_gies_seeds_f1']:.3f} | {r['gies_f1']:.3f} "
              f"| {r['ours_on_gies_seeds_shd']:.1f} | {r['gies_shd']:.1f} "
              f"| {r['gies_s_per_fit']:.1f} | {r['gies_pooled_f1']:.3f} | {r['gies_pooled_shd']:.1f} | {mae} | {r['chain_gap']:.2f} "
              f"| {r['ms_per_grpo_decision']:.1f} | {r['ms_per_plugin_decision']:.1f} "
              f"| {r['peak_rss_mb']:.0f} |")
    return df


FAMILIES = ("er", "sf")


def _families(comma_list):
    def parse(text: str) -> list[str]:
        names = comma_list(text)
        bad = [n for n in names if n not in FAMILIES]
        if bad or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                f"--families takes distinct names from {', '.join(FAMILIES)}, got {text!r}")
        return names
    return parse


def add_parser(sub, comma_list, positive_int, degree_range) -> None:
    from jobs._cli import seed_int
    s = sub.add_parser("scale", help="posterior speed, memory and accuracy from d = 10 to 100")

    def ints(text: str) -> list[int]:
        dims = [positive_int("--dims", 3)(x) for x in comma_list(text)]
        if len(set(dims)) != len(dims):
            raise argparse.ArgumentTypeError(f"--dims lists a size twice: {text!r}")
        return dims

    s.add_argument("--dims", type=ints, default=[10, 15, 20, 30, 50, 100])
    s.add_argument("--families", type=_families(comma_list), default=list(FAMILIES))
    s.add_argument("--degree", type=degree_range, default=[2.0, 4.0],
                   help="expected-degree range lo,hi (each graph draws its degree from it)")
    s.add_argument("--seeds", type=positive_int("--seeds"), default=10)
    s.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    s.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=50)
    s.add_argument("--base-seed", type=seed_int("--base-seed"), default=0)
    s.add_argument("--gies-seeds", type=positive_int("--gies-seeds", 0), default=10,
                   help="GIES fits per (family, d), on the first seeds")
    s.add_argument("--gies-max-d", type=positive_int("--gies-max-d", 0), default=100,
                   help="no GIES above this d (a fit takes about 5 s at d = 50, 30 s at d = 100)")
    s.add_argument("--exact-check-max-d", type=positive_int("--exact-check-max-d", 0), default=None,
                   help="largest d at which the MCMC posterior is also run against the exact DP "
                        "(default: every d where the posterior is exact)")
    # Posterior settings; unset ones take AnalyticConfig's defaults.
    s.add_argument("--max-indegree", type=positive_int("--max-indegree"), default=None)
    s.add_argument("--score", choices=["bic", "bge"], default=None)
    s.add_argument("--candidates", type=positive_int("--candidates"), default=None)
    s.add_argument("--chains", type=positive_int("--chains"), default=None)
    s.add_argument("--mcmc-steps", type=positive_int("--mcmc-steps"), default=None)
    s.add_argument("--burn-in", type=positive_int("--burn-in"), default=None,
                   help="MCMC steps per chain of the first update with data")
    s.add_argument("--decisions", action="store_true",
                   help="also time one grpo_active and one plugin_active decision per d")
