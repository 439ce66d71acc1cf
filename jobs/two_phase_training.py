"""Phase 2: active structure learning with chosen intervention selectors, and comparisons.

    python -m jobs.two_phase_training --scm-type easy,medium,hard \\
        --methods random_active,uncertainty_active --seeds 30 --output-dir phase2_results

Writes to ``--output-dir`` (each file atomically; finished batches are cached under
``cells/`` so an interrupted run resumes where it stopped; rerunning the same command into it
resumes, a command with other settings is refused):

* ``steps.csv``    one row per (scm, method, seed, step); step 0 = after observational data;
                   ``chain_gap``: the MCMC posterior's largest edge-marginal disagreement
                   between chains (0 for the exact posterior and the neural surrogate)
* ``summary.csv``  per (scm, method): mean and 95% CI of F1-AUC, final F1/SHD, best target,
                   final chain gap; ``posterior``: the structure learner in use, in words
* ``paired.csv``   each method minus ``random_active`` on the same seeds (diff, win rate, p),
                   then ``grpo_active`` minus each other method (column ``baseline``)
* ``comparison.md`` the printed comparison table, each SCM's headed by its posterior
* ``phase2_result_<scm>.pkl`` the seed document's result structure per SCM
* ``comparison_results_<scm>.pkl`` (with ``--compare``) all methods' structures + tables
* ``plot_<scm>.png`` F1 and SHD against step with 95% bands
* ``config.json``  the full configuration of the run
* ``run.json``     the settings the outputs depend on, compared on every rerun
"""

from __future__ import annotations

import dataclasses
import os
import sys

from jobs._cli import (ArgumentParser, check_ray_flags, comma_list, fail, gpus_per_worker,
                       lookahead_draws, phase2_memory_bytes, positive_float, positive_int,
                       refuse_oversized, run_script, seed_int, user_errors_exit_2)

PROG = "two_phase_training"
COMPARE_METHODS = ("random_active", "grpo_active", "grpo_bootstrap")
N_OBSERVATIONAL, N_INTERVENTIONS = 30, 50


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--grpo-checkpoint", default=None,
                   help="trained GRPO checkpoint directory (or its policy_params.pkl)")
    p.add_argument("--scm-type", type=comma_list, default=["easy"],
                   help="easy, medium, hard, a random family (er10, sf15, chain5, mixed8, ...) or "
                        "an SCM JSON path; comma-separated for several")
    p.add_argument("--n-interventions", type=positive_int("--n-interventions"), default=None,
                   help="interventions per episode, >= 1 (with none, every method sees the same "
                        f"data); default: the family's protocol (dense<d>: 10), else {N_INTERVENTIONS}")
    p.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=None,
                   help=f"default: the family's protocol (dense<d>: 50), else {N_OBSERVATIONAL}")
    # Measured on `hard`: learning rates of 5 and more end in non-finite posteriors, 1 and 2 not.
    p.add_argument("--learning-rate", type=positive_float("--learning-rate", maximum=1.0),
                   default=1e-3, help="learning rate of the neural surrogate, in (0, 1] (the "
                                      "analytic one is closed-form)")
    p.add_argument("--compare", action="store_true",
                   help="run random_active, grpo_active and grpo_bootstrap on the same SCMs/seeds")
    p.add_argument("--methods", type=comma_list, default=None,
                   help="comma-separated: random_active, round_robin_active, uncertainty_active, "
                        "oracle_active, observational, plugin_active, grpo_active, grpo_bootstrap")
    p.add_argument("--surrogate", choices=["analytic", "neural"], default="analytic")
    p.add_argument("--max-indegree", type=positive_int("--max-indegree"), default=None,
                   help="largest parent set of the analytic posterior (k, default 4, dense<d>: "
                        "d-1; any k <= d-1 where the exact DP runs, d <= 16)")
    p.add_argument("--score", choices=["bic", "bge"], default="bic",
                   help="local score of the analytic posterior")
    p.add_argument("--seeds", type=positive_int("--seeds"), default=10,
                   help="number of seeds (cells use seeds 0..N-1)")
    p.add_argument("--base-seed", type=seed_int("--base-seed"), default=0)
    p.add_argument("--lookahead-draws", type=lookahead_draws, default="auto",
                   help="outcomes per candidate in the policy's lookahead input when acting, "
                        "and in plugin_active's (training uses 1; each draw costs two posterior "
                        "updates per candidate variable). auto (default): 8 up to d = 10, 3 at d = 11, "
                        "1 from d = 12")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=32,
                   help="seeds per vmapped batch (the unit of work and of resuming)")
    p.add_argument("--num-workers", type=positive_int("--num-workers", 0), default=0,
                   help="0 = in-process without Ray; N = N Ray actors")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--gpus-per-worker", type=gpus_per_worker, default=0.0)
    p.add_argument("--output-dir", default="phase2_results")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or lines, no table before the end")
    return p


def resolve_methods(args) -> list[str]:
    from causal_grpo.active_learning import Method
    valid = [m.value for m in Method]
    if args.compare:
        methods = list(COMPARE_METHODS) + [m for m in (args.methods or []) if m not in COMPARE_METHODS]
    elif args.methods:
        methods = list(args.methods)
    else:
        methods = ["grpo_active"] if args.grpo_checkpoint else ["random_active"]
    for m in methods:
        if m not in valid:
            fail(PROG, f"unknown method '{m}' (choose from {', '.join(valid)})")
    if len(set(methods)) != len(methods):
        fail(PROG, f"--methods lists a method twice: {','.join(methods)}")
    needs = [m for m in methods if m.startswith("grpo")]
    if needs and not args.grpo_checkpoint:
        fail(PROG, f"method(s) {','.join(needs)} need --grpo-checkpoint DIR")
    return methods


def check_memory(args, n_scms: int, methods: list[str], d: int, n_obs: int, n_int: int) -> None:
    """Refuse, before any work, a sweep that cannot fit in this machine's memory.

    d: the largest SCM's number of variables (2, the least, before the SCMs are read);
    n_obs, n_int: the episode's sizes (before the SCMs are read: the flags, else the largest
    protocol default).
    """
    batch = min(args.batch_size, args.seeds)
    need = phase2_memory_bytes(d, batch, n_obs, n_int,
                               n_scms * len(methods) * args.seeds, args.surrogate == "neural")
    defaults = build_parser()
    fallback = {"n_interventions": N_INTERVENTIONS, "n_observational": N_OBSERVATIONAL}
    sizes = {f"--{k.replace('_', '-')}": (v, defaults.get_default(k) or fallback.get(k))
             for k, v in (("seeds", args.seeds), ("n_interventions", n_int),
                          ("n_observational", n_obs), ("batch_size", batch))}
    # The SCMs' size, against the largest of the README's sweeps.
    sizes["--scm-type"] = (d, 100, f"--scm-type with {d} variables")
    refuse_oversized(need, sizes, f"{n_scms} SCM{'s' * (n_scms > 1)} x {len(methods)} method"
                                  f"{'s' * (len(methods) > 1)} x {args.seeds} seeds x "
                                  f"{n_int + 1} steps")


def episode_config(sources: dict, n_observational: int | None, n_interventions: int | None,
                   surrogate, lookahead_draws: int | str = "auto"):
    """The episode of a sweep over ``sources`` (name -> SCM source).

    A flag that is given wins; otherwise every SCM's family protocol (``dense<d>``: 50 + 10)
    or 30 + 50 without one, and SCMs that disagree are refused. Where a family needs every
    parent set scored (``dense<d>``, d <= 10) the analytic posterior gets that in-degree,
    unless ``surrogate`` already carries an analytic config.
    """
    from causal_grpo.active_learning import EpisodeConfig
    from causal_grpo.errors import UserError
    from causal_grpo.surrogate import SurrogateKind
    from causal_grpo.surrogate_bayes import AnalyticConfig

    def protocol_value(given, field: str, default: int, flag: str) -> int:
        if given is not None:
            return given
        wanted = {name: getattr(getattr(src, "protocol", None), field, default)
                  for name, src in sources.items()}
        if len(set(wanted.values())) > 1:
            raise UserError(f"the SCMs' protocols differ in {flag} ({wanted}); give {flag} "
                            "or run them separately")
        return next(iter(wanted.values()))

    n_obs = protocol_value(n_observational, "n_observational", N_OBSERVATIONAL,
                           "--n-observational")
    n_int = protocol_value(n_interventions, "n_interventions", N_INTERVENTIONS,
                           "--n-interventions")
    if surrogate.kind is SurrogateKind.ANALYTIC and surrogate.analytic is None:
        indegree = sweep_indegree(sources, None)
        if indegree:
            surrogate = dataclasses.replace(surrogate,
                                            analytic=AnalyticConfig(max_indegree=indegree))
    return EpisodeConfig(n_observational=n_obs, n_interventions=n_int, surrogate=surrogate,
                         lookahead_draws=lookahead_draws)


def sweep_indegree(sources: dict, given: int | None) -> int | None:
    """The analytic posterior's largest parent set for a sweep over ``sources``.

    ``given`` (--max-indegree) wins; else a family that needs every parent set scored
    (``dense<d>``) sets it, and None keeps the default. One posterior serves the whole sweep,
    so SCMs it would score with a larger parent set than their own (``er10`` beside
    ``dense10``) are refused: they would not give their own results, nor their speed.
    """
    from causal_grpo.errors import UserError
    from causal_grpo.scm_families import FamilyConfig
    from causal_grpo.surrogate_bayes import AnalyticConfig

    if given is not None:
        return given
    needs = {name: getattr(src, "max_indegree", None) for name, src in sources.items()}
    chosen = max((k for k in needs.values() if k), default=None)
    default = AnalyticConfig().max_indegree

    def scored(name: str, k: int) -> int:      # the exact DP takes k up to d - 1
        src = sources[name]
        return min(k, (src.padded if isinstance(src, FamilyConfig) else src.d) - 1)

    off = [name for name, k in needs.items()
           if scored(name, chosen or default) != scored(name, k or default)]
    if off:
        shown = ", ".join(f"{name}: {k or default}" for name, k in needs.items())
        raise UserError(f"the SCMs' posteriors differ in their largest parent set ({shown}); "
                        "give --max-indegree K or run them separately")
    return chosen


@user_errors_exit_2(PROG)
def main(argv: list[str] | None = None) -> int:
    return run(argv)


def run(argv: list[str] | None = None, check_only: bool = False) -> int:
    """The job without its one-line error handling (``jobs.main`` runs it under its own).

    ``check_only``: validate everything, the output directory included (free, or holding a run
    of these settings), and compute nothing; the main job does this before Phase 1, whose
    checkpoint ``--grpo-checkpoint`` names, so that checkpoint may not exist yet.
    """
    args = build_parser().parse_args(argv)
    from causal_grpo import io
    # Refused after its directory was made (a Ray cluster found wanting): none is left behind.
    with io.no_new_dirs_if_refused(args.output_dir):
        return _run(args, argv, check_only)


def _run(args, argv: list[str] | None, check_only: bool) -> int:
    check_ray_flags(args.address, args.num_workers, args.gpus_per_worker)
    methods = resolve_methods(args)
    check_memory(args, len(args.scm_type), methods, 2,
                 args.n_observational or max(N_OBSERVATIONAL, 50),
                 args.n_interventions or N_INTERVENTIONS)

    # Heavy imports after flag validation, so `--help` and flag errors are instant.
    from causal_grpo import io
    from causal_grpo.active_learning import Method
    from causal_grpo.errors import UserError
    from causal_grpo.scm_families import FamilyConfig, resolve_scm
    from causal_grpo.surrogate import SurrogateConfig, SurrogateKind
    from causal_grpo.surrogate_bayes import AnalyticConfig, Score, check_fits
    from causal_grpo.surrogate_neural import NeuralConfig
    from causal_grpo.sweep import SweepConfig
    from causal_grpo.results import comparison, sweep_settings, write_phase2_outputs

    sources = {}
    for name in args.scm_type:
        src = resolve_scm(name)
        if src.name in sources:
            raise UserError(f"SCM name '{src.name}' appears twice in --scm-type")
        sources[src.name] = src
    policy = None
    # Before Phase 1 the policy may still be to train; once trained it is known by content.
    pending = check_only and args.grpo_checkpoint and not os.path.exists(args.grpo_checkpoint)
    if args.grpo_checkpoint and not pending:
        from causal_grpo.checkpoint import load_grpo_policy
        from causal_grpo.policy import policy_handle
        policy = policy_handle(load_grpo_policy(args.grpo_checkpoint),
                               lookahead_draws=args.lookahead_draws)

    indegree = sweep_indegree(sources, args.max_indegree)
    analytic = AnalyticConfig(score=Score(args.score),
                              **({"max_indegree": indegree} if indegree else {}))
    neural = args.surrogate == "neural"
    surrogate = SurrogateConfig(
        kind=SurrogateKind(args.surrogate), analytic=None if neural else analytic,
        neural=NeuralConfig(learning_rate=args.learning_rate) if neural else None)
    posterior = {}
    for name, src in sources.items():
        d = src.padded if isinstance(src, FamilyConfig) else src.d
        if neural:
            posterior[name] = f"neural surrogate, learning rate {args.learning_rate:g}"
        else:
            check_fits(analytic, d, min(args.batch_size, args.seeds))
            posterior[name] = analytic.describe(d)
    cfg = SweepConfig(
        scms=tuple(sources), methods=tuple(Method(m) for m in methods), seeds=args.seeds,
        episode=episode_config(sources, args.n_observational, args.n_interventions, surrogate,
                               args.lookahead_draws),
        base_seed=args.base_seed, batch_size=min(args.batch_size, args.seeds))
    check_memory(args, len(sources), methods, max(src.d for src in sources.values()),
                 cfg.episode.n_observational, cfg.episode.n_interventions)
    io.ensure_writable_dir(args.output_dir, exclusive=True)

    # What the output files depend on; worker and display flags may change between reruns.
    # The policy by its content, not its path: under `ray job submit` the same checkpoint
    # lies in a new directory at every submission, and a path can name another policy later.
    settings = sweep_settings(cfg, sources) | {
        "compare": args.compare,
        "grpo_policy": policy.digest if policy is not None else None,
        "lookahead_draws": args.lookahead_draws if args.grpo_checkpoint else None}
    if check_only:
        from causal_grpo.results import claim_output_dir
        claim_output_dir(args.output_dir, settings, unknown=("grpo_policy",) if pending else ())
        return 0
    finished_scms = []

    def scm_table(scm: str, batches: dict) -> str:
        finished_scms.append(scm)
        return (f"{scm} finished ({len(finished_scms)} of {len(sources)} SCMs; every table is "
                f"printed again at the end):\n\n" + comparison(cfg, sources, batches, posterior)[3])

    from cluster.run_sweep import run_sweep
    results = run_sweep(cfg, sources, policy, args.output_dir, num_workers=args.num_workers,
                        address=args.address, gpus_per_worker=args.gpus_per_worker,
                        progress=not args.quiet, settings=settings,
                        on_scm_done=scm_table if len(sources) > 1 and not args.quiet else None)
    table = write_phase2_outputs(
        args.output_dir, cfg, sources, results, posterior=posterior, compare=args.compare,
        plots=not args.no_plots,
        extra_config={"argv": sys.argv[1:] if argv is None else list(argv),
                      "compare": args.compare, "grpo_checkpoint": args.grpo_checkpoint,
                      "grpo_policy": policy.digest if policy is not None else None})
    print(table)
    print(f"results written to {os.path.abspath(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_script(main)
