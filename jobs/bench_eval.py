"""The frozen evaluation: the trained policy against every reference, paired on fresh cells.

    python -m jobs.benchmark eval --grpo-checkpoint RUN_A RUN_B RUN_C --output-dir OUT

Each ``RUN`` is a Phase-1 output directory: ``RUN/final`` is the trained policy and
``RUN/step_0`` the same run's untrained one. On every SCM (default: easy, medium, hard, er10,
er15, sf10, sf15, dense10) and the same seeds of the evaluation base seed
(:data:`EVAL_BASE_SEED`, far from every seed used in development), it runs random_active,
observational, uncertainty_active, plugin_active (the greedy plug-in chooser at the policy's
acting draws), both policies of every run and, on ``dense<d>``, the policy of a run trained
on that family (``--protocol-checkpoint``), then tests the trained policy of each run
against each reference on F1-AUC over steps 1-10 (one-sided paired t-test, Holm-corrected
across SCMs). A claim holds only if it holds in every run. SCMs run at their family's protocol
(``dense<d>``: 50 observational samples, values in [-1, 1], every parent set scored; the rest
30 observational samples), all with ``--n-interventions`` (10) interventions.

Acting cost is counted in posterior updates per decision beyond the learner's own update:
0 for random, observational and uncertainty (which reads the current posterior); for the
plug-in chooser and a policy with the lookahead input, one refit of the posterior to the data
plus 2 (d - 1) K lookahead updates (every non-target variable at both ends of the range, K
draws each; above the exact posterior's size, 2 x 8 K updates of the what-if posterior, for the
8 variables of the lookahead's shortlist); a policy without the lookahead, 0.

Writes to ``OUT`` (cells are cached under ``OUT/cells``: a rerun resumes): ``steps.csv`` (one
row per scm, method, run, seed, step: F1, SHD with reversal = 1, AUPRC, ...), ``per_seed.csv``
(F1-AUC 1-10), ``methods.csv`` (mean, CI and cost per method), ``paired.csv`` (per run),
``pooled.csv`` (across runs), ``dense.csv`` (F1/SHD/AUPRC after 0, 1, 5, 10 interventions),
``eval.md`` (the printed tables, the summary README quotes first) and ``config.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

from jobs._cli import comma_list, gpus_per_worker, lookahead_draws, positive_int, seed_int

# Never used in development (base seeds there: 0 to about 1,000,100 and from 1,000,003 on);
# below 2^31, so it survives any signed 32-bit handling of a seed.
EVAL_BASE_SEED = 2_000_000_000
EVAL_SCMS = ("easy", "medium", "hard", "er10", "er15", "sf10", "sf15", "dense10")
REFERENCES = ("random_active", "observational", "uncertainty_active", "plugin_active")
UNTRAINED, TRAINED = "untrained_policy", "trained_policy"
PROTOCOL_POLICY = "protocol_policy"   # trained on the dense protocol's own Phase-1 family
AUC_STEPS = 10
DENSE_STEPS = (0, 1, 5, 10)
ALPHA = 0.05


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="frozen evaluation: trained policy vs every reference, paired")
    e.add_argument("--grpo-checkpoint", nargs="+", required=True, metavar="RUN",
                   help="Phase-1 output directories (each with step_0/ and final/); one per "
                        "training run")
    e.add_argument("--output-dir", required=True)
    e.add_argument("--protocol-checkpoint", default=None, metavar="RUN",
                   help="a Phase-1 run trained on the dense family itself: its final/ policy "
                        "joins the tables of the dense<d> SCMs (not the paired claims)")
    e.add_argument("--scms", type=comma_list, default=list(EVAL_SCMS))
    e.add_argument("--seeds", type=positive_int("--seeds"), default=50)
    e.add_argument("--base-seed", type=seed_int("--base-seed"), default=EVAL_BASE_SEED,
                   help="override only for validation runs (default: the evaluation's seeds)")
    e.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=AUC_STEPS)
    e.add_argument("--lookahead-draws", type=lookahead_draws, default="auto",
                   help="acting draws of the policies and of plugin_active (auto: as Phase 2)")
    e.add_argument("--batch-size", type=positive_int("--batch-size"), default=25)
    e.add_argument("--num-workers", type=positive_int("--num-workers", 0), default=0,
                   help="0 = in-process without Ray; N = N Ray actors")
    e.add_argument("--address", default=None)
    e.add_argument("--gpus-per-worker", type=gpus_per_worker, default=0.0)
    e.add_argument("--quiet", action="store_true", help="no progress bars")


def acting_cost(d: int, lookahead: bool, draws: int, exact: bool = True) -> int:
    """Posterior updates per decision beyond the learner's own (see module docstring);
    ``exact``: whether the episode's posterior is the exact one (else the lookahead scores
    only its shortlist)."""
    from causal_grpo.active_learning import LOOKAHEAD_SHORTLIST

    candidates = d - 1 if exact else min(LOOKAHEAD_SHORTLIST, d - 1)
    return 1 + 2 * candidates * draws if lookahead else 0


def _policies(runs: Sequence[str], protocol_run: str | None,
              draws) -> list[tuple[int, str, object]]:
    """(run index, label, policy handle): the untrained and trained policy of every run, and
    the protocol run's trained policy (run -1, as the references: not a run of the claims)."""
    from causal_grpo.checkpoint import load_grpo_policy
    from causal_grpo.policy import policy_handle
    from causal_grpo.errors import UserError

    wanted = [(r, run, label, sub) for r, run in enumerate(runs)
              for label, sub in ((UNTRAINED, "step_0"), (TRAINED, "final"))]
    if protocol_run is not None:
        wanted.append((-1, protocol_run, PROTOCOL_POLICY, "final"))
    out = []
    for r, run, label, sub in wanted:
        path = os.path.join(run, sub)
        if not os.path.isdir(path):
            raise UserError(f"{run} has no {sub}/ (a Phase-1 run directory holds step_0/ "
                            "and final/)")
        loaded = load_grpo_policy(path)
        kind = (loaded.metadata.get("training") or {}).get("graph_kind")
        if label == PROTOCOL_POLICY and kind not in (None, "dense"):
            # Its row is the dense protocol's own policy, set apart from the claims' runs.
            raise UserError(f"--protocol-checkpoint {run} was trained on the {kind} family; "
                            "the dense protocol's policy is trained with `train_grpo "
                            "--scm-family dense`")
        out.append((r, label, policy_handle(loaded, lookahead_draws=draws)))
    return out


def _groups(sources: dict, n_interventions: int, draws) -> list[tuple[object, dict]]:
    """SCMs grouped by their episode (family protocols differ): [(EpisodeConfig, sources)]."""
    from causal_grpo.surrogate import SurrogateConfig
    from jobs.two_phase_training import episode_config

    groups: dict = {}
    for name, src in sources.items():
        ep = episode_config({name: src}, None, n_interventions, SurrogateConfig(), draws)
        groups.setdefault(ep, {})[name] = src
    return list(groups.items())


def run_cells(args, sources: dict, policies: list) -> tuple[list, dict]:
    """Every sweep of the evaluation through the cell cache: ([(scm, method, run, arrays)],
    {(scm, method, run): updates per decision})."""
    from causal_grpo.active_learning import Method
    from causal_grpo.policy import resolve_lookahead_draws
    from causal_grpo.surrogate_bayes import AnalyticConfig
    from causal_grpo.sweep import SweepConfig
    from cluster.run_sweep import run_sweep

    cells, cost = [], {}
    for episode, group in _groups(sources, args.n_interventions, args.lookahead_draws):
        sweeps = [(tuple(Method(m) for m in REFERENCES), None, -1, None, tuple(group))]
        dense = tuple(n for n, s in group.items() if getattr(s, "protocol", None) is not None)
        sweeps += [((Method.GRPO_ACTIVE,), p, r, label, dense if label == PROTOCOL_POLICY
                    else tuple(group)) for r, label, p in policies]
        for methods, policy, run, label, scms in sweeps:
            if not scms:
                continue
            cfg = SweepConfig(scms=scms, methods=methods, seeds=args.seeds,
                              episode=episode, base_seed=args.base_seed,
                              batch_size=min(args.batch_size, args.seeds))
            done = run_sweep(cfg, {n: group[n] for n in scms}, policy, args.output_dir,
                             num_workers=args.num_workers, address=args.address,
                             gpus_per_worker=args.gpus_per_worker, progress=not args.quiet)
            for b in sorted(done, key=lambda b: (cfg.scms.index(b.scm),
                                                 cfg.methods.index(b.method), b.seeds[0])):
                cells.append((b.scm, label or b.method.value, run, done[b]))
        for name, src in group.items():
            padded = getattr(src, "padded", src.d)
            k = resolve_lookahead_draws(episode.lookahead_draws, padded)
            exact = (episode.surrogate.analytic or AnalyticConfig()).exact(padded)
            for m in REFERENCES:
                cost[name, m, -1] = acting_cost(src.d, m == "plugin_active", k, exact)
            for r, label, p in policies:
                cost[name, label, r] = acting_cost(src.d, p.config.lookahead, k, exact)
    return cells, cost


def tidy_steps(cells: list, sources: dict):
    """One row per (scm, method, run, seed, step) with every per-step metric."""
    import pandas as pd

    from causal_grpo.results import steps_frame
    from causal_grpo.scm import SCMSpec

    names = {n: (s.variables if isinstance(s, SCMSpec) else ()) for n, s in sources.items()}
    frames = []
    for run in sorted({c[2] for c in cells}):
        part = steps_frame(((s, m, a) for s, m, r, a in cells if r == run), names)
        frames.append(part.assign(run=run))
    steps = pd.concat(frames, ignore_index=True)
    cols = ["scm", "method", "run", "seed", "step"]
    return steps[cols + [c for c in steps.columns if c not in cols]]


def per_seed_auc(cells: list, last: int):
    """F1-AUC over steps 1..last per (scm, method, run, seed)."""
    import numpy as np
    import pandas as pd

    from causal_grpo.results import f1_auc

    rows = [pd.DataFrame({"scm": s, "method": m, "run": r, "seed": a["seed"],
                          "f1_auc": f1_auc(a["f1"], last)}) for s, m, r, a in cells]
    out = pd.concat(rows, ignore_index=True)
    out["seed"] = out["seed"].astype(np.int64)
    return out


def paired_tables(auc, scms: Sequence[str], runs: int, cost: dict):
    """Trained policy of each run minus each reference, per SCM, with Holm across SCMs
    (per run and reference), beside both sides' updates per decision; and the same pooled
    across runs."""
    import pandas as pd

    from causal_grpo.results import holm, paired_stats

    def series(scm, method, run):
        sel = auc[(auc["scm"] == scm) & (auc["method"] == method) & (auc["run"] == run)]
        return sel.set_index("seed")["f1_auc"]

    rows = []
    for run in range(runs):
        for ref in REFERENCES + (UNTRAINED,):
            block = []
            for scm in scms:
                mine = series(scm, TRAINED, run)
                theirs = series(scm, ref, run if ref == UNTRAINED else -1)
                common = mine.index.intersection(theirs.index)
                diff = (mine.loc[common] - theirs.loc[common]).to_numpy(float)
                m, ci, win, p = paired_stats(diff)
                block.append({"run": run, "reference": ref, "scm": scm, "n_pairs": len(common),
                              "trained": float(mine.loc[common].mean()),
                              "reference_f1_auc": float(theirs.loc[common].mean()),
                              "diff": m, "diff_ci95": ci, "win_rate": win, "p": p,
                              "trained_updates": cost[scm, TRAINED, run],
                              "reference_updates": cost[scm, ref, run if ref == UNTRAINED else -1]})
            for row, ph in zip(block, holm([b["p"] for b in block])):
                row["p_holm"] = float(ph)
                row["holds"] = bool(ph < ALPHA)
            rows += block
    paired = pd.DataFrame(rows)
    pooled = (paired.groupby(["scm", "reference"], sort=False)
              .agg(runs=("run", "nunique"), diff_mean=("diff", "mean"),
                   diff_min=("diff", "min"), diff_max=("diff", "max"),
                   diff_sd_runs=("diff", "std"), p_holm_max=("p_holm", lambda p: p.max(skipna=False)),
                   holds_every_run=("holds", "all"),
                   trained_updates=("trained_updates", "max"),
                   reference_updates=("reference_updates", "max"))
              .reset_index())
    return paired, pooled


def method_table(auc, cost: dict):
    """Per (scm, method, run): seeds, F1-AUC mean and CI, updates per decision."""
    import pandas as pd

    from causal_grpo.results import mean_ci

    rows = []
    for (scm, method, run), g in auc.groupby(["scm", "method", "run"], sort=False):
        m, ci = mean_ci(g["f1_auc"].to_numpy())
        rows.append({"scm": scm, "method": method, "run": run, "n_seeds": len(g),
                     "f1_auc_mean": m, "f1_auc_ci95": ci,
                     "updates_per_decision": cost[scm, method, run]})
    return pd.DataFrame(rows)


def dense_table(steps, scms: Sequence[str]):
    """F1, SHD, AUPRC (mean and CI over seeds) after 0, 1, 5, 10 interventions per method."""
    import pandas as pd

    from causal_grpo.results import mean_ci

    sel = steps[steps["scm"].isin(scms) & steps["step"].isin(DENSE_STEPS)]
    rows = []
    for (scm, method, run, step), g in sel.groupby(["scm", "method", "run", "step"], sort=False):
        row = {"scm": scm, "method": method, "run": run, "step": step, "n_seeds": len(g)}
        for col in ("f1", "shd", "auprc"):
            row[f"{col}_mean"], row[f"{col}_ci95"] = mean_ci(g[col].to_numpy())
        rows.append(row)
    # Fixed columns: an evaluation without a dense SCM has an empty table, not a shapeless one.
    return pd.DataFrame(rows, columns=["scm", "method", "run", "step", "n_seeds"] + [
        f"{col}_{stat}" for col in ("f1", "shd", "auprc") for stat in ("mean", "ci95")])


def _label(method: str, run: int) -> str:
    return method if run < 0 else f"{method} (run {run})"


def _p(x: float) -> str:
    return "—" if x != x else f"{x:.3g}"


def verdict(pooled) -> list[str]:
    """One line per reference: on how many SCMs the trained policy beats it in every run."""
    n = pooled["scm"].nunique()
    out = []
    for ref, g in pooled.groupby("reference", sort=False):
        won = g.loc[g["holds_every_run"], "scm"].tolist()
        out.append(f"- trained policy > {ref}: {len(won)} of {n} SCMs in every run"
                   + (f" ({', '.join(won)})" if won else ""))
    return out


SHORT = {"random_active": "random", "observational": "observ.", "uncertainty_active": "uncertainty",
         "plugin_active": "plug-in", UNTRAINED: "untrained", TRAINED: "trained",
         PROTOCOL_POLICY: "trained on the protocol"}
SUMMARY_REFS = ("plugin_active", UNTRAINED, "uncertainty_active")


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def dense_summary(scm: str, g) -> list[str]:
    """One dense SCM's README table: each method's F1, SHD and AUPRC after 1, 5 and 10
    interventions (those within the episode), policies averaged over runs; step 0 in the line
    above it (every method starts from the same data)."""
    at = g.groupby(["method", "step"], sort=False)[["f1_mean", "shd_mean", "auprc_mean"]].mean()
    steps = sorted(s for s in DENSE_STEPS if s > 0 and s in set(g["step"]))
    if not steps:
        return []
    start = at.xs(0, level="step")
    after = " / ".join(map(str, steps))
    lines = ["", f"{scm}: all methods start from F1 {start['f1_mean'].mean():.3f}, SHD "
                 f"{start['shd_mean'].mean():.1f}, AUPRC {start['auprc_mean'].mean():.3f} "
                 "(policies: mean of runs)\n",
             f"| method | F1 after {after} | SHD after {after} | AUPRC after {after} |",
             "|---|---:|---:|---:|"]
    present = set(g["method"])
    for method in [m for m in REFERENCES + (UNTRAINED, TRAINED, PROTOCOL_POLICY) if m in present]:
        r = at.loc[method]
        cells = [" / ".join(f"{r.loc[s, col]:.{digits}f}" for s in steps)
                 for col, digits in (("f1_mean", 3), ("shd_mean", 1), ("auprc_mean", 3))]
        lines.append(f"| {SHORT[method]} | " + " | ".join(cells) + " |")
    return lines


def summary(methods, pooled, dense, last: int) -> list[str]:
    """README's tables: per SCM each method's F1-AUC (the policies' mean over runs, the trained
    one's range of run means) and the trained policy minus the strongest references, ✓ where
    Holm p < ALPHA in every run; per dense SCM :func:`dense_summary`."""
    runs = int(pooled["runs"].max())
    cols = REFERENCES + (UNTRAINED,)
    lines = [f"## Summary: F1-AUC over steps 1–{last}, trained policy minus the strongest "
             f"references (mean of {runs} runs; ✓: Holm p < {ALPHA} in every run)\n",
             "| scm | " + " | ".join(SHORT[m] for m in cols) + f" | trained ({runs} runs) | "
             + " | ".join(f"− {SHORT[r]}" for r in SUMMARY_REFS) + " |",
             "|---|" + "---:|" * (len(cols) + 1 + len(SUMMARY_REFS))]
    for scm in dict.fromkeys(methods["scm"]):
        mean = methods[methods.scm == scm].groupby("method")["f1_auc_mean"].mean()
        trained = methods[(methods.scm == scm) & (methods.method == TRAINED)]["f1_auc_mean"]
        cells = [f"{mean[m]:.3f}" for m in cols]
        cells.append(f"{trained.mean():.3f} ({trained.min():.3f}–{trained.max():.3f})")
        for ref in SUMMARY_REFS:
            row = pooled[(pooled.scm == scm) & (pooled.reference == ref)].iloc[0]
            cells.append(_signed(row["diff_mean"]) + (" ✓" if row["holds_every_run"] else ""))
        lines.append(f"| {scm} | " + " | ".join(cells) + " |")
    for scm, g in dense.groupby("scm", sort=False):
        lines += dense_summary(scm, g)
    return lines + [""]


def markdown(methods, paired, pooled, dense, last: int) -> str:
    from causal_grpo.results import fmt_ci

    lines = [f"## Verdict (one-sided paired t-test on F1-AUC 1–{last}, Holm across SCMs, "
             f"p < {ALPHA})\n"] + verdict(pooled) + [""] + summary(methods, pooled, dense, last) + [
             f"## F1-AUC over steps 1–{last} and acting cost\n",
             f"| scm | method | seeds | F1-AUC 1–{last} | updates / decision |",
             "|---|---|---:|---:|---:|"]
    for _, r in methods.iterrows():
        lines.append(f"| {r['scm']} | {_label(r['method'], r['run'])} | {r['n_seeds']} | "
                     f"{fmt_ci(r['f1_auc_mean'], r['f1_auc_ci95'])} "
                     f"| {r['updates_per_decision']} |")
    lines += ["", f"## Trained policy minus each reference, across runs (holds: Holm p < {ALPHA} "
                  "in every run)\n",
              "| scm | reference | runs | Δ mean | Δ min … max | max Holm p | holds "
              "| updates / decision: trained, reference |",
              "|---|---|---:|---:|---:|---:|---|---:|"]
    for _, r in pooled.iterrows():
        lines.append(f"| {r['scm']} | {r['reference']} | {r['runs']} | {r['diff_mean']:+.3f} | "
                     f"{r['diff_min']:+.3f} … {r['diff_max']:+.3f} | {_p(r['p_holm_max'])} | "
                     f"{'yes' if r['holds_every_run'] else 'no'} | "
                     f"{r['trained_updates']}, {r['reference_updates']} |")
    lines += ["", "## Per run\n",
              "| run | scm | reference | pairs | Δ F1-AUC | win rate | p (one-sided) | Holm p |",
              "|---:|---|---|---:|---:|---:|---:|---:|"]
    for _, r in paired.iterrows():
        lines.append(f"| {r['run']} | {r['scm']} | {r['reference']} | {r['n_pairs']} | "
                     f"{fmt_ci(r['diff'], r['diff_ci95'], signed=True)} | {r['win_rate']:.2f} | "
                     f"{_p(r['p'])} | {_p(r['p_holm'])} |")
    if not dense.empty:
        lines += ["", "## Dense protocol: after 0, 1, 5 and 10 interventions (SHD: reversal = 1)\n",
                  "| scm | method | step | F1 | SHD | AUPRC |", "|---|---|---:|---:|---:|---:|"]
        for _, r in dense.iterrows():
            lines.append(f"| {r['scm']} | {_label(r['method'], r['run'])} | {r['step']} | "
                         f"{fmt_ci(r['f1_mean'], r['f1_ci95'])} | "
                         f"{fmt_ci(r['shd_mean'], r['shd_ci95'], 2)} | "
                         f"{fmt_ci(r['auprc_mean'], r['auprc_ci95'])} |")
    return "\n".join(lines) + "\n"


OUTPUTS = ("steps.csv", "per_seed.csv", "methods.csv", "paired.csv", "pooled.csv", "dense.csv",
           "eval.md", "config.json")


def claim_eval_dir(out: str) -> None:
    """Refuse ``out`` if it holds anything but an evaluation's outputs, its cell cache and
    hidden files: the tables share names with other jobs' (``steps.csv``, ``config.json``),
    and writing them into another run's directory would mix two runs' files. Another
    evaluation's directory is accepted: every table is rewritten, and cells are keyed by
    their own settings."""
    from causal_grpo.errors import UserError

    others = sorted(n for n in os.listdir(out)
                    if n not in OUTPUTS + ("cells",) and not n.startswith("."))
    config = os.path.join(out, "config.json")
    if not others and os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                if "references" not in json.load(f):
                    others = ["config.json"]
        except (OSError, ValueError, TypeError):
            others = ["config.json"]
    if others:
        raise UserError(f"output directory {out} holds files benchmark eval does not write "
                        f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                        "use another --output-dir")


def _check_memory(args, sources: dict, n_methods: int) -> None:
    """Refuse, before any work, an evaluation whose batches and records cannot fit."""
    from jobs._cli import phase2_memory_bytes, refuse_oversized

    batch, n_obs = min(args.batch_size, args.seeds), 50     # the most a protocol observes
    need = phase2_memory_bytes(max(s.d for s in sources.values()), batch, n_obs,
                               args.n_interventions, len(sources) * n_methods * args.seeds)
    refuse_oversized(need, {"--seeds": (args.seeds, 50), "--batch-size": (batch, 25),
                            "--n-interventions": (args.n_interventions, AUC_STEPS)},
                     f"{len(sources)} SCMs x {n_methods} methods x {args.seeds} seeds x "
                     f"{args.n_interventions + 1} steps")


def bench_eval(args):
    """Run (or resume) the evaluation, write its tables to ``--output-dir`` and print them."""
    from causal_grpo import io
    from causal_grpo.errors import UserError
    from causal_grpo.scm_families import GraphKind, resolve_scm

    from jobs._cli import check_ray_flags

    t0 = time.time()
    check_ray_flags(args.address, args.num_workers, args.gpus_per_worker)
    if len(set(args.scms)) != len(args.scms):
        raise UserError(f"--scms lists an SCM twice: {','.join(args.scms)}")
    sources = {name: resolve_scm(name) for name in args.scms}
    # One run given twice would count as two in "holds in every run".
    runs = [os.path.realpath(r) for r in args.grpo_checkpoint]
    if len(set(runs)) < len(runs):
        raise UserError(f"--grpo-checkpoint lists a run twice: {' '.join(args.grpo_checkpoint)}")
    if args.protocol_checkpoint is not None and not any(
            getattr(s, "kind", None) is GraphKind.DENSE for s in sources.values()):
        raise UserError("--protocol-checkpoint is for the dense<d> SCMs, and --scms has none")
    policies = _policies(args.grpo_checkpoint, args.protocol_checkpoint, args.lookahead_draws)
    _check_memory(args, sources, len(REFERENCES) + len(policies))
    io.ensure_writable_dir(args.output_dir, exclusive=True)
    claim_eval_dir(args.output_dir)
    cells, cost = run_cells(args, sources, policies)
    last = min(AUC_STEPS, args.n_interventions)
    steps = tidy_steps(cells, sources)
    auc = per_seed_auc(cells, last)
    methods = method_table(auc, cost)
    paired, pooled = paired_tables(auc, list(sources), len(args.grpo_checkpoint), cost)
    dense_scms = [n for n, s in sources.items() if getattr(s, "kind", None) is GraphKind.DENSE]
    dense = dense_table(steps, dense_scms)
    table = markdown(methods, paired, pooled, dense, last)

    out = args.output_dir
    # One update: an interrupt leaves the earlier evaluation's tables or all of these.
    with io.one_update():
        for name, df in (("steps", steps), ("per_seed", auc), ("methods", methods),
                         ("paired", paired), ("pooled", pooled), ("dense", dense)):
            io.write_atomic(os.path.join(out, f"{name}.csv"),
                            lambda p, df=df: df.to_csv(p, index=False))
        io.write_text(os.path.join(out, "eval.md"), table)
        io.write_json(os.path.join(out, "config.json"), {
            "argv": sys.argv[1:], "scms": list(sources), "seeds": args.seeds,
            "base_seed": args.base_seed, "n_interventions": args.n_interventions,
            "lookahead_draws": args.lookahead_draws, "runs": list(args.grpo_checkpoint),
            "protocol_run": args.protocol_checkpoint,
            "policy_digests": [[r, label, p.digest] for r, label, p in policies],
            "references": list(REFERENCES), "alpha": ALPHA})
    print(table)
    print(f"eval: {time.time() - t0:.0f} s; written to {os.path.abspath(out)}", flush=True)
    return pooled
