"""Tidy result tables, aggregation with confidence intervals, paired comparisons and plots.

* ``steps`` frame: one row per (scm, method, seed, step); step 0 is the state after the
  observational data.
* F1-AUC over steps a..b is the mean F1 over those steps (the area under the F1-vs-step curve
  divided by its length); ``f1_auc`` uses steps 1..T, ``f1_auc_early`` steps 1..min(10, T).
* 95% confidence intervals are Student-t intervals of the mean over seeds (half-widths).
* Paired comparisons pair a method with the baseline on the same (scm, seed) — same SCM draw,
  same observational data, same exogenous noise — and report the mean difference with its CI,
  the win rate (ties count one half) and a one-sided paired t-test p-value for "better than
  the baseline" (higher F1-AUC / F1, lower SHD).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import special

from causal_grpo import io
from causal_grpo.active_learning import StepRecord
from causal_grpo.errors import UserError
from causal_grpo.options import differences
from causal_grpo.scm import SCMSpec

EARLY_STEPS = 10

def steps_frame(batches: Iterable[tuple[str, str, dict]], names: dict[str, Sequence[str]]) -> pd.DataFrame:
    """Tidy per-step frame from ``(scm, method, arrays)`` triples of :func:`sweep.run_batch`."""
    frames = []
    for scm, method, arr in batches:
        S, T1 = arr["f1"].shape
        cols = {
            "scm": np.repeat(scm, S * T1),
            "method": np.repeat(method, S * T1),
            "seed": np.repeat(arr["seed"], T1),
            "step": np.tile(np.arange(T1), S),
        }
        for f in StepRecord._fields:
            cols[f] = arr[f].reshape(-1)
        var_names = list(names.get(scm, ()))
        v = cols["variable"].astype(int)
        cols["variable_name"] = np.array(
            [var_names[i] if 0 <= i < len(var_names) else ("" if i < 0 else f"X{i}") for i in v],
            dtype=object)
        frames.append(pd.DataFrame(cols))
    df = pd.concat(frames, ignore_index=True)
    # Keep the caller's scm and method order (categoricals sort in order of appearance).
    for col in ("scm", "method"):
        df[col] = pd.Categorical(df[col], categories=list(dict.fromkeys(df[col])), ordered=True)
    df["shd"] = df["shd"].astype(int)
    df["parent_shd"] = df["parent_shd"].astype(int)
    df["variable"] = df["variable"].astype(int)
    df = df.sort_values(["scm", "method", "seed", "step"], kind="stable").reset_index(drop=True)
    for col in ("scm", "method"):
        df[col] = df[col].astype(str)
    return df


def per_seed(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (scm, method, seed) with the summary quantities of that episode.

    Rows keep the order in which (scm, method) first appear in ``steps``.
    """
    steps = steps.copy()
    for col in ("scm", "method"):
        steps[col] = pd.Categorical(steps[col], categories=list(dict.fromkeys(steps[col])),
                                    ordered=True)
    steps = steps.sort_values("step", kind="stable")
    g = steps.groupby(["scm", "method", "seed"], sort=True, observed=True)
    out = pd.DataFrame({
        "final_f1": g["f1"].last(),
        "final_shd": g["shd"].last(),
        "final_parent_f1": g["parent_f1"].last(),
        "final_auprc": g["auprc"].last(),
        "initial_f1": g["f1"].first(),
        "f1_auc": g["f1"].apply(lambda f: float(f1_auc(f.to_numpy()))),
        "f1_auc_early": g["f1"].apply(lambda f: float(f1_auc(f.to_numpy(), EARLY_STEPS))),
        "best_target": g["best_target"].last(),
        "final_chain_gap": g["chain_gap"].last(),
    }).dropna(how="all")
    out = out.reset_index()
    for col in ("scm", "method"):
        out[col] = out[col].astype(str)
    return out


def f1_auc(f1: np.ndarray, last: int | None = None) -> np.ndarray:
    """F1-AUC per row: mean F1 over steps 1..last (all steps when None) of ``f1`` (seeds, T+1).

    Step 0 (before any intervention) is excluded; with no intervention step the AUC is
    step 0's F1.
    """
    f1 = np.asarray(f1, float)
    if f1.shape[-1] < 2:
        return f1[..., 0]
    stop = f1.shape[-1] if last is None else min(last, f1.shape[-1] - 1) + 1
    return f1[..., 1:stop].mean(-1)


def paired_p(better: np.ndarray, alternative: str = "greater") -> float:
    """One-sample t-test p-value of paired differences (``better`` > 0 means better).

    NaN when fewer than two pairs or no spread (the test is undefined there). Spread within
    rounding counts as none: differences such as 0.3 - 0.2 and 0.4 - 0.3 would otherwise give a
    "significant" p from rounding noise alone. Metrics are stored as float32 (about 7 digits),
    so on values of order one, differences that agree to 1e-6 are the same difference.
    """
    better = np.asarray(better, float)
    if len(better) < 2 or not np.ptp(better) > 1e-6 * max(1.0, np.max(np.abs(better))):
        return float("nan")
    # scipy.stats.ttest_1samp's arithmetic, step for step (the same p to the last bit), without
    # importing scipy.stats: its import is about a second of every job's start.
    n = len(better)
    mean = np.mean(better)
    t = mean / np.sqrt(np.mean((better - mean) ** 2) * (n / (n - 1)) / n)
    if alternative == "greater":
        return float(special.stdtr(n - 1, -t))
    if alternative == "less":
        return float(special.stdtr(n - 1, t))
    raise ValueError(f"alternative must be 'greater' or 'less', not {alternative!r}")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order (shape of ``pvalues``).

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j));
    rejecting where the adjusted value is below alpha controls the family-wise error at
    alpha. NaN p-values (undefined tests) stay NaN and do not count towards m.
    """
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p.ravel()))
    order = finite[np.argsort(p.ravel()[finite], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p.ravel()[order]
    out.ravel()[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def t_halfwidth(sd: np.ndarray, n: np.ndarray) -> np.ndarray:
    """95% Student-t half-width of the mean of ``n`` values of sample std ``sd`` (NaN where
    n < 2: no width can be estimated)."""
    sd, n = np.asarray(sd, float), np.asarray(n)
    ok = n > 1
    df = np.where(ok, n - 1, 1)
    return np.where(ok, special.stdtrit(df, 0.975) * sd / np.sqrt(np.where(ok, n, 1)), np.nan)


def mean_ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and 95% Student-t half-width (NaN for a single value)."""
    x = np.asarray(x, float)
    sd = np.std(x, ddof=1) if len(x) > 1 else math.nan
    return float(np.mean(x)), float(t_halfwidth(sd, len(x)))


def paired_stats(diff: np.ndarray, sign: float = 1.0) -> tuple[float, float, float, float]:
    """Paired differences ``diff`` (``sign`` * diff > 0 is better): their mean, its 95%
    half-width, the win rate (ties count one half) and the one-sided paired t-test p."""
    diff = np.asarray(diff, float)
    better = sign * diff
    m, ci = mean_ci(diff)
    return m, ci, float(np.mean((better > 0) + 0.5 * (better == 0))), paired_p(better)


SUMMARY_METRICS = ("f1_auc_early", "f1_auc", "final_f1", "final_shd", "final_parent_f1",
                   "final_auprc", "best_target", "final_chain_gap")


def summary_frame(steps: pd.DataFrame) -> pd.DataFrame:
    """Per (scm, method): seeds, and mean / 95% CI half-width of each summary metric."""
    ps = per_seed(steps)
    rows = []
    for (scm, method), grp in ps.groupby(["scm", "method"], sort=False):
        row = {"scm": scm, "method": method, "n_seeds": len(grp)}
        for m in SUMMARY_METRICS:
            row[f"{m}_mean"], row[f"{m}_ci95"] = mean_ci(grp[m].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


HIGHER_IS_BETTER = {"f1_auc_early": True, "f1_auc": True, "final_f1": True, "final_shd": False,
                    "final_parent_f1": True, "final_auprc": True, "best_target": False}


def paired_frame(steps: pd.DataFrame, baseline: str = "random_active",
                 metrics: Sequence[str] = ("f1_auc_early", "f1_auc", "final_f1", "final_shd")
                 ) -> pd.DataFrame:
    """Each method minus ``baseline`` on the same (scm, seed): diff, CI, win rate, p-value."""
    ps = per_seed(steps)
    rows = []
    for scm, grp in ps.groupby("scm", sort=False):
        base = grp[grp["method"] == baseline].set_index("seed")
        if base.empty:
            continue
        for method, mg in grp.groupby("method", sort=False):
            if method == baseline:
                continue
            mg = mg.set_index("seed")
            common = base.index.intersection(mg.index)
            row = {"scm": scm, "method": method, "baseline": baseline, "n_pairs": len(common)}
            for m in metrics:
                diff = (mg.loc[common, m] - base.loc[common, m]).to_numpy(float)
                (row[f"{m}_diff"], row[f"{m}_diff_ci95"], row[f"{m}_win_rate"],
                 row[f"{m}_p"]) = paired_stats(diff, 1.0 if HIGHER_IS_BETTER[m] else -1.0)
            rows.append(row)
    return pd.DataFrame(rows)


POLICY = "grpo_active"


def paired_tables(steps: pd.DataFrame, baseline: str = "random_active") -> pd.DataFrame | None:
    """``paired.csv``: each method minus ``baseline``, then :data:`POLICY` minus every other
    method it ran beside (the ``baseline`` column names the reference of each row).

    None when ``baseline`` did not run.
    """
    methods = list(steps["method"].unique())
    if baseline not in methods:
        return None
    frames = [paired_frame(steps, baseline)]
    if POLICY in methods:
        for ref in methods:
            if ref not in (POLICY, baseline):
                vs = paired_frame(steps, ref)
                frames.append(vs[vs["method"] == POLICY])
    return pd.concat(frames, ignore_index=True)


def _policy_lines(scm: str, paired: pd.DataFrame, early_steps: int) -> list[str]:
    """One line per reference other than random: the policy's paired difference, both
    one-sided p-values (better, worse), so "not significantly worse" reads off the table, and
    the two-sided one (the t-test is symmetric: twice the smaller one-sided p)."""
    rows = paired[(paired["scm"] == scm) & (paired["method"] == POLICY)
                  & (paired["baseline"] != paired["baseline"].iloc[0])]
    out = []
    for _, p in rows.iterrows():
        pv = p["f1_auc_early_p"]
        ps = ("p —" if np.isnan(pv) else f"one-sided p {pv:.3g} (better), {1 - pv:.3g} (worse),"
              f" two-sided p {2 * min(pv, 1 - pv):.3g}")
        out.append(f"{POLICY} − {p['baseline']}: Δ F1-AUC 1–{early_steps} "
                   f"{fmt_ci(p['f1_auc_early_diff'], p['f1_auc_early_diff_ci95'], signed=True)}, "
                   f"win rate {p['f1_auc_early_win_rate']:.2f}, {ps}")
    return out + [""] if out else out


def fmt_ci(m: float, ci: float, digits: int | None = 3, signed: bool = False) -> str:
    """``m ± ci`` for tables (``digits`` decimals, or None: 3 significant digits, for numbers
    in the SCM's own units); ``m ± —`` where the CI is undefined (one seed)."""
    spec = ".3g" if digits is None else f".{digits}f"
    half = "—" if math.isnan(ci) else f"{ci:{spec}}"
    return f"{m:{'+' if signed else ''}{spec}} ± {half}"


def markdown_table(summary: pd.DataFrame, paired: pd.DataFrame | None = None,
                   early_steps: int = EARLY_STEPS) -> str:
    """A markdown comparison table per SCM (mean ± 95% CI; paired Δ vs the baseline), headed
    by the posterior in use when ``summary`` has a ``posterior`` column."""
    lines = []
    for scm, grp in summary.groupby("scm", sort=False):
        lines.append(f"### {scm}\n")
        if "posterior" in grp:
            line = f"posterior: {grp['posterior'].iloc[0]}"
            gap = grp["final_chain_gap_mean"].max()
            if gap > 0:
                line += f"; chain gap after the last step {gap:.3f} (mean over seeds, worst method)"
            lines.append(line + "\n")
        head = (f"| method | seeds | F1-AUC 1–{early_steps} | F1-AUC all | final F1 | final SHD "
                f"| best target |")
        sep = "|---|---:|---:|---:|---:|---:|---:|"
        if paired is not None and not paired.empty:
            head += f" Δ F1-AUC 1–{early_steps} vs random | win rate | p (one-sided) |"
            sep += "---:|---:|---:|"
        lines += [head, sep]
        for _, r in grp.iterrows():
            cells = [fmt_ci(r[f"{m}_mean"], r[f"{m}_ci95"], digits)
                     for m, digits in (("f1_auc_early", 3), ("f1_auc", 3), ("final_f1", 3),
                                       ("final_shd", 2), ("best_target", None))]
            line = f"| {r['method']} | {r['n_seeds']} | " + " | ".join(cells) + " |"
            if paired is not None and not paired.empty:
                p = paired[(paired["scm"] == scm) & (paired["method"] == r["method"])
                           & (paired["baseline"] == paired["baseline"].iloc[0])]
                if p.empty:
                    line += " — | — | — |"
                else:
                    p = p.iloc[0]
                    pv = p["f1_auc_early_p"]
                    diff = fmt_ci(p["f1_auc_early_diff"], p["f1_auc_early_diff_ci95"], signed=True)
                    line += (f" {diff} | {p['f1_auc_early_win_rate']:.2f} "
                             f"| {'—' if np.isnan(pv) else f'{pv:.3g}'} |")
            lines.append(line)
        lines.append("")
        if paired is not None and not paired.empty:
            lines += _policy_lines(scm, paired, early_steps)
    return "\n".join(lines)


def method_metrics(steps: pd.DataFrame, scm: str, method: str) -> dict:
    """Seed-document result structure for one (scm, method), averaged over seeds."""
    sub = steps[(steps["scm"] == scm) & (steps["method"] == method)]
    by_step = sub.groupby("step")
    per = {s: g.sort_values("step") for s, g in sub.groupby("seed")}
    f1 = by_step["f1"].mean().to_numpy()
    shd = by_step["shd"].mean().to_numpy()
    tv = by_step["target_value"].mean().to_numpy()
    best = by_step["best_target"].mean().to_numpy()
    inter = sub[sub["variable"] >= 0]
    counts = inter["variable_name"].value_counts().sort_index()
    return {
        "structure_learning_metrics": {
            "f1_scores": f1.tolist(),
            "shd_scores": shd.tolist(),
            "parent_f1_scores": by_step["parent_f1"].mean().to_numpy().tolist(),
            "expected_shd_scores": by_step["expected_shd"].mean().to_numpy().tolist(),
            "final_f1": float(f1[-1]),
            "final_shd": float(shd[-1]),
            "final_parent_f1": float(by_step["parent_f1"].mean().to_numpy()[-1]),
            "f1_scores_per_seed": {int(s): g["f1"].tolist() for s, g in per.items()},
            "shd_scores_per_seed": {int(s): g["shd"].astype(int).tolist() for s, g in per.items()},
        },
        "target_optimization": {
            "target_values": tv.tolist(),
            "best_target_values": best.tolist(),
            "initial_target_value": float(tv[0]),
            "final_best_target_value": float(best[-1]),
            "improvement": float(tv[0] - best[-1]),
        },
        "intervention_diversity": {
            "variable_counts": {str(k): int(v) for k, v in counts.items()},
            "unique_variables_per_seed": float(inter.groupby("seed")["variable"].nunique().mean())
            if not inter.empty else 0.0,
        },
        "n_seeds": int(sub["seed"].nunique()),
    }


def plot_curves(steps: pd.DataFrame, scm: str, path: str) -> None:
    """F1 and SHD against step for every method of ``scm``, with 95% bands; saved as PNG."""
    import sys
    if "matplotlib" not in sys.modules:
        # The plots are files, drawn by Agg whatever display backend MPLBACKEND names; an
        # unknown name would fail matplotlib's import here, after the run's compute.
        named = os.environ.pop("MPLBACKEND", None)
        try:
            import matplotlib
        finally:
            if named is not None:
                os.environ["MPLBACKEND"] = named
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = steps[steps["scm"] == scm]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, grp in sub.groupby("method", sort=False):
        for ax, col in zip(axes, ("f1", "shd")):
            g = grp.groupby("step")[col]
            m = g.mean().to_numpy(float)
            n = g.count().to_numpy()
            ci = np.nan_to_num(t_halfwidth(g.std(ddof=1).to_numpy(float), n))   # no band: 1 seed
            x = np.arange(len(m))
            ax.plot(x, m, label=method)
            ax.fill_between(x, m - ci, m + ci, alpha=0.2)
    axes[0].set(xlabel="intervention step", ylabel="F1 (whole graph)", title=f"{scm}: F1")
    axes[1].set(xlabel="intervention step", ylabel="SHD", title=f"{scm}: SHD")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- Phase-2 outputs

RUN_FILE = "run.json"
# Output files whose set depends on the flags; a rewrite removes the ones it did not write.
VARIABLE_OUTPUTS = ("paired.csv", "phase2_result_*.pkl", "comparison_results_*.pkl", "plot_*.png")


def sweep_settings(cfg, sources: dict) -> dict:
    """The sweep part of ``config.json`` and ``run.json``: what determines its numbers."""
    return {
        "scms": list(cfg.scms), "methods": [m.value for m in cfg.methods], "seeds": cfg.seeds,
        "base_seed": cfg.base_seed, "batch_size": cfg.batch_size,
        "episode": jsonable(dataclasses.asdict(cfg.episode)),
        "scm_definitions": {n: (s.to_dict() if isinstance(s, SCMSpec) else
                                jsonable(dataclasses.asdict(s))) for n, s in sources.items()},
    }


def _normalised(settings: dict) -> dict:
    return json.loads(json.dumps(jsonable(settings), sort_keys=True))


def claim_output_dir(out_dir: str, settings: dict, unknown: tuple[str, ...] = ()) -> None:
    """Refuse ``out_dir`` unless it is free or holds a run of the same ``settings``.

    ``unknown``: settings not known yet (a policy that Phase 1 has still to train): results
    recorded with a value for them are refused now, since the value to come may differ (and
    would be refused only after the training); a later claim with them compares them too.

    Free means nothing but ``cells/`` (keyed by its own digest) and hidden files, or a
    ``run.json`` beside them whose run stopped before its first batch was saved (refused for
    memory, interrupted while compiling): there is nothing to keep, and the flags its error
    suggests must be usable here. The settings are recorded by :func:`record_run`; a rerun
    with the same ones resumes.

    Raises:
      UserError: the directory holds another run's outputs (or outputs of unknown settings).
    """
    path = os.path.join(out_dir, RUN_FILE)
    if not os.path.exists(path):
        others = sorted(n for n in os.listdir(out_dir) if n != "cells" and not n.startswith("."))
        if others:
            raise UserError(f"output directory {out_dir} is not empty ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}) and records no run; "
                            "use another --output-dir")
        return
    if not _holds_results(out_dir):
        return
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)["settings"]
        if not isinstance(recorded, dict):
            raise TypeError("settings is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}); use another --output-dir"
                        ) from None
    known = [k for k in unknown if recorded.get(k) is not None]
    if known:
        raise UserError(f"output directory {out_dir} holds results of another run's "
                        f"{known[0]}, which this run knows only once it is trained (a new one "
                        "may differ); use another --output-dir, or train first")
    settings = _normalised({k: v for k, v in settings.items() if k not in unknown})
    recorded = {k: v for k, v in recorded.items() if k not in unknown}
    if recorded != settings:
        differ = sorted({k.split(".")[0] for k, _, _ in differences(recorded, settings)})
        raise UserError(f"output directory {out_dir} holds a run with other settings "
                        f"({', '.join(differ)} differ); use another --output-dir")


def _holds_results(out_dir: str) -> bool:
    """Whether ``out_dir`` holds anything but ``run.json``, hidden files and an empty cache."""
    if any(n not in (RUN_FILE, "cells") and not n.startswith(".") for n in os.listdir(out_dir)):
        return True
    return any(f.endswith(".npz") and not f.startswith(".")
               for _, _, files in os.walk(os.path.join(out_dir, "cells")) for f in files)


def record_run(out_dir: str, settings: dict) -> None:
    """Write ``run.json`` (the settings :func:`claim_output_dir` compares against)."""
    io.write_json(os.path.join(out_dir, RUN_FILE), {"settings": _normalised(settings)})


def _variable_names(sources: dict) -> dict[str, tuple[str, ...]]:
    return {n: (s.variables if isinstance(s, SCMSpec) else tuple(f"X{i}" for i in range(s.d)))
            for n, s in sources.items()}


def comparison(cfg, sources: dict, batch_results: dict, posterior: dict[str, str]):
    """``(steps, summary, paired, table)`` of the batches in ``batch_results``, in the sweep's
    SCM and method order. Every statistic is per SCM, so the batches of one SCM give exactly
    that SCM's part of the whole sweep's table."""
    order = sorted(batch_results, key=lambda b: (list(cfg.scms).index(b.scm),
                                                 list(cfg.methods).index(b.method), b.seeds[0]))
    steps = steps_frame(((b.scm, b.method.value, batch_results[b]) for b in order),
                        _variable_names(sources))
    summary = summary_frame(steps)
    summary["posterior"] = [posterior[n] for n in summary["scm"]]
    paired = paired_tables(steps)
    table = markdown_table(summary, paired, early_steps=min(EARLY_STEPS, cfg.episode.n_interventions))
    return steps, summary, paired, table


def write_phase2_outputs(out_dir: str, cfg, sources: dict, batch_results: dict, *,
                         posterior: dict[str, str], compare: bool = False, plots: bool = True,
                         extra_config: dict | None = None) -> str:
    """Write every Phase-2 output file, all as one update (:func:`io.one_update`); returns the
    markdown comparison table.

    Files of :data:`VARIABLE_OUTPUTS` that this call does not write are removed, so none
    from an earlier invocation stays beside the new results.

    Args:
      out_dir: output directory (exists, writable).
      cfg: the :class:`causal_grpo.sweep.SweepConfig` that was run.
      sources: display name -> SCM source.
      batch_results: :class:`~causal_grpo.sweep.Batch` -> arrays of ``run_batch``.
      posterior: SCM name -> the structure learner in use, in words (``summary.csv``'s
        ``posterior`` column, the table, ``config.json`` and the result pickles).
      compare: also write ``comparison_results_<scm>.pkl``.
      plots: write ``plot_<scm>.png``.
      extra_config: merged into ``config.json``.
    """
    names = _variable_names(sources)
    steps, summary, paired, table = comparison(cfg, sources, batch_results, posterior)
    written = set()

    def out(name: str) -> str:
        written.add(name)
        return os.path.join(out_dir, name)

    # One update: an interrupt leaves the earlier run's files or all of these, never a mix.
    with io.one_update():
        io.write_atomic(out("steps.csv"), lambda p: steps.to_csv(p, index=False))
        io.write_atomic(out("summary.csv"), lambda p: summary.to_csv(p, index=False))
        if paired is not None and not paired.empty:
            io.write_atomic(out("paired.csv"), lambda p: paired.to_csv(p, index=False))
        io.write_text(out("comparison.md"), table + "\n")

        config = sweep_settings(cfg, sources) | {"posterior": posterior} | (extra_config or {})
        io.write_json(out("config.json"), config)

        methods = [m.value for m in cfg.methods]
        primary = next((m for m in ("grpo_active",) if m in methods), methods[0])
        for scm in cfg.scms:
            src = sources[scm]
            per_method = {m: method_metrics(steps, scm, m) for m in methods}
            base = {"scm": scm, "variables": list(names[scm]),
                    "target": (names[scm][src.target] if isinstance(src, SCMSpec) else "per seed"),
                    "posterior": posterior[scm], "config": config, "method": primary}
            result = base | per_method[primary] | {"methods": per_method}
            io.write_pickle(out(f"phase2_result_{scm}.pkl"), result)
            if compare:
                cmp = base | {"methods": per_method,
                              "summary": summary[summary["scm"] == scm].to_dict("records"),
                              "paired_vs_random": ([] if paired is None else paired[
                                  (paired["scm"] == scm) & (paired["baseline"] == "random_active")
                              ].to_dict("records"))}
                io.write_pickle(out(f"comparison_results_{scm}.pkl"), cmp)
            if plots:
                # The temporary name ends in the target's name, so matplotlib writes PNG.
                io.write_atomic(out(f"plot_{scm}.png"),
                                lambda p, scm=scm: plot_curves(steps, scm, p))
        for pattern in VARIABLE_OUTPUTS:
            for path in glob.glob(os.path.join(glob.escape(out_dir), pattern)):
                if os.path.basename(path) not in written:
                    io.remove(path)
    return table


def jsonable(obj):
    """Dataclass dicts with enums/tuples made JSON-friendly."""
    import enum
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
