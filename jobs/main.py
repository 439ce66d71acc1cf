"""The main job (``make main``): Phase 1 with its defaults, then the Phase-2 comparison.

    python -m jobs.main [--num-workers N] [--address ADDR] [--seeds N] [--phase1-dir DIR]
                        [--output-dir DIR]

1. ``jobs.train_grpo`` with its defaults into ``grpo_runs/default`` (skipped when its
   ``final/`` checkpoint exists; an interrupted run resumes from its newest checkpoint).
2. ``jobs.two_phase_training --compare`` (random_active, grpo_active, grpo_bootstrap, plus
   the uncertainty rule and the greedy plug-in chooser the policy starts from) on easy,
   medium, hard and held-out random ER graphs of 10 and 15 variables, 30 seeds, 30
   observational samples + 50 interventions, into ``phase2_results``.

Both run on laptop-local Ray with ``--num-workers`` actors (default 2), or on the cluster named by
``--address`` / ``RAY_ADDRESS`` (as under ``ray job submit``).
"""

from __future__ import annotations

import os

from causal_grpo import io
from causal_grpo.errors import UserError
from jobs import train_grpo, two_phase_training
from jobs._cli import ArgumentParser, positive_int, run_script, user_errors_exit_2

PROG = "main"
# Phase 1's own bound, so that a count Phase 1 refuses is refused before anything runs.
MAX_WORKERS = int(train_grpo.RunOptions.__dataclass_fields__["num_workers"]
                  .metadata["option"].high)


@user_errors_exit_2(PROG)
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--num-workers", type=positive_int("--num-workers", 0, MAX_WORKERS),
                   default=2,
                   help="Ray actors of both phases (0 = in-process, without Ray; default 2)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--seeds", type=positive_int("--seeds"), default=30,
                   help="Phase-2 seeds per SCM (default 30)")
    p.add_argument("--phase1-dir", default="grpo_runs/default",
                   help="Phase 1's checkpoints; a finished run there is reused "
                        "(default grpo_runs/default)")
    p.add_argument("--output-dir", default="phase2_results",
                   help="Phase 2's tables, plots and cells (default phase2_results)")
    args = p.parse_args(argv)
    for flag, given in (("--phase1-dir", args.phase1_dir), ("--output-dir", args.output_dir)):
        if not given.strip():       # else refused inside a phase, under the phase's own flag
            raise UserError(f"{flag} must not be empty or blank")
    one, two = (os.path.join(os.path.realpath(d), "") for d in (args.phase1_dir, args.output_dir))
    if one.startswith(two) or two.startswith(one):
        # Phase 2 would find Phase 1's checkpoints in its directory (or the other way round)
        # only after the training: refused now.
        raise UserError(f"--phase1-dir {args.phase1_dir} and --output-dir {args.output_dir} "
                        "overlap; give two separate directories")
    ray_args = ["--num-workers", str(args.num_workers)] + (
        ["--address", args.address] if args.address else [])

    phase2 = [
        "--grpo-checkpoint", os.path.join(args.phase1_dir, "final"), "--compare",
        "--methods", "uncertainty_active,plugin_active", "--scm-type", "easy,medium,hard,er10,er15",
        "--seeds", str(args.seeds), "--n-observational", "30", "--n-interventions", "50",
        # Batches of 10 seeds: a lookahead batch at d = 15 (about 0.2 s per decision) stays a
        # few minutes long, so work spreads over the workers and resumes in small steps.
        "--batch-size", "10", "--output-dir", args.output_dir] + ray_args
    phase1 = ["--output-dir", args.phase1_dir] + ray_args
    # Both directories are checked before Phase 1's minutes of training; a run refused later
    # (a Ray cluster found wanting) leaves neither behind while it is empty.
    with io.no_new_dirs_if_refused(args.phase1_dir, args.output_dir):
        two_phase_training.run(phase2, check_only=True)
        train_grpo.check_output_dir(*train_grpo.config_from_args(
            train_grpo.build_parser().parse_args(phase1)), dir_flag="--phase1-dir")
        print(f"== Phase 1: GRPO training -> {args.phase1_dir}")
        train_grpo.run(phase1, dir_flag="--phase1-dir")
        print("== Phase 2: comparison")
        return two_phase_training.run(phase2)


if __name__ == "__main__":
    run_script(main)
