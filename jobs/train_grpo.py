"""Phase 1: train the GRPO intervention policy with bootstrap features.

    python -m jobs.train_grpo --output-dir grpo_runs/default

Writes ``DIR/step_<n>/`` every ``--checkpoint-every`` iterations and ``DIR/final/`` (each with
``policy_params.pkl`` and ``config.json``), and ``DIR/train_log.csv``. Rerunning the same
command resumes from the newest checkpoint; a finished run is left as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs._cli import ArgumentParser, positive_float, positive_int, user_errors_exit_2

PROG = "train_grpo"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default="grpo_runs/default")
    p.add_argument("--episodes", type=positive_int("--episodes"), default=None,
                   help="total training episodes; scales the default curriculum (default 6104)")
    p.add_argument("--max-variables", type=positive_int("--max-variables", 3), default=15,
                   help="largest SCM of the curriculum (3..15)")
    p.add_argument("--scm-family", choices=["mixed", "er", "sf", "chain", "fork", "collider"],
                   default="mixed", help="graph shapes of the training SCMs")
    p.add_argument("--group-size", type=positive_int("--group-size", 2), default=16)
    p.add_argument("--steps-per-episode", type=positive_int("--steps-per-episode"), default=10)
    p.add_argument("--n-observational", type=positive_int("--n-observational", 2), default=30)
    p.add_argument("--feature-source", choices=["bootstrap", "surrogate", "mixed"],
                   default="mixed",
                   help="policy features during training: bootstrap (true graph + decaying noise), "
                        "surrogate (the exact posterior), or mixed (each episode draws one)")
    p.add_argument("--noise-per-graph", action="store_true",
                   help="one noise level per training graph (log-uniform 0.1..2, each node within "
                        "+-25%%) instead of each node's std drawn from 0.1..2")
    p.add_argument("--data-stats", action="store_true",
                   help="the policy also reads the buffer's correlations, partial correlations "
                        "and each variable's R^2 on the others")
    p.add_argument("--structure-weight", type=float, default=1.0)
    p.add_argument("--target-weight", type=float, default=0.0)
    p.add_argument("--reward-outcomes", type=positive_int("--reward-outcomes"), default=1,
                   help="outcomes (noise draws) averaged into each candidate's reward")
    p.add_argument("--map-share", type=float, default=0.0,
                   help="share of the structure reward paid on the posterior's point estimate")
    p.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True,
                   help="the policy also reads each variable's one-step plug-in gain at both ends "
                        "of the range (data only; 2d posterior updates per decision; on by default)")
    p.add_argument("--lookahead-prior", type=positive_float("--lookahead-prior", allow_zero=True), default=None,
                   help="add this (learned) multiple of the lookahead to the logits, so training "
                        "starts from the plug-in chooser (default 2 with --lookahead; 0 = off)")
    p.add_argument("--distill-coef", type=float, default=0.0,
                   help="weight of the cross-entropy to the expected-gain teacher (0 = off)")
    p.add_argument("--teacher-draws", type=positive_int("--teacher-draws"), default=2,
                   help="outcomes simulated from the true SCM per teacher candidate")
    p.add_argument("--teacher-values", type=positive_int("--teacher-values"), default=2,
                   help="value bins the teacher scores per variable (2: the range's ends)")
    p.add_argument("--teacher-temperature", type=positive_float("--teacher-temperature"),
                   default=0.5, help="softmax temperature of the teacher's z-scored gains")
    p.add_argument("--teacher-source", choices=["truth", "plugin"], default="truth",
                   help="teacher outcomes from the true SCM, or from a linear SCM fitted to the data")
    p.add_argument("--learning-rate", type=positive_float("--learning-rate"), default=3e-4)
    p.add_argument("--clip-eps", type=positive_float("--clip-eps"), default=0.2)
    p.add_argument("--clip-eps-high", type=positive_float("--clip-eps-high"), default=None)
    p.add_argument("--entropy-coef", type=float, default=0.01)
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--no-std-normalization", action="store_true",
                   help="Dr. GRPO: centre group rewards without dividing by their std")
    p.add_argument("--eval-every", type=positive_int("--eval-every", 0), default=20)
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every", 0), default=50)
    p.add_argument("--seed", type=positive_int("--seed", 0), default=0)
    p.add_argument("--num-workers", type=positive_int("--num-workers", 0), default=0,
                   help="0 = in-process; N = N Ray rollout actors")
    p.add_argument("--address", default=None)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    return p


def config_from_args(args):
    from causal_grpo import grpo
    from causal_grpo.phase1 import (DEFAULT_CURRICULUM, FeatureSource, Phase1Config, Stage,
                                    TeacherConfig)
    from causal_grpo.rewards import RewardConfig
    from causal_grpo.scm_families import GraphKind
    from causal_grpo.errors import UserError
    from causal_grpo.networks import PolicyConfig

    if args.lookahead_prior is None:
        args.lookahead_prior = 2.0 if args.lookahead else 0.0
    if args.lookahead_prior and not args.lookahead:
        raise UserError("--lookahead-prior needs --lookahead")
    if args.max_variables > 15:
        raise UserError("--max-variables must be at most 15 (the exact posterior's training range)")
    stages = []
    for s in DEFAULT_CURRICULUM:
        sizes = tuple(x for x in s.sizes if x <= args.max_variables)
        if sizes:
            stages.append(Stage(sizes, max(sizes), s.iterations, s.episodes))
    if args.episodes is not None:
        total = sum(s.iterations * s.episodes for s in stages)
        scale = args.episodes / total
        stages = [dataclasses.replace(s, iterations=max(1, round(s.iterations * scale)))
                  for s in stages]
    cfg = Phase1Config(
        curriculum=tuple(stages), graph_kind=GraphKind(args.scm_family),
        steps_per_episode=args.steps_per_episode, n_observational=args.n_observational,
        feature_source=FeatureSource(args.feature_source),
        noise_level_range=(0.1, 2.0) if args.noise_per_graph else None,
        policy=PolicyConfig(data_stats=int(args.data_stats), lookahead=int(args.lookahead),
                            lookahead_prior=float(args.lookahead_prior)),
        grpo=grpo.GRPOConfig(group_size=args.group_size, clip_eps=args.clip_eps,
                             clip_eps_high=args.clip_eps_high,
                             normalize_std=not args.no_std_normalization,
                             entropy_coef=args.entropy_coef, kl_coef=args.kl_coef,
                             distill_coef=args.distill_coef, learning_rate=args.learning_rate),
        teacher=TeacherConfig(draws=args.teacher_draws, n_values=args.teacher_values,
                              temperature=args.teacher_temperature, source=args.teacher_source),
        reward=RewardConfig(structure_weight=args.structure_weight, target_weight=args.target_weight,
                            outcomes=args.reward_outcomes, map_share=args.map_share),
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed)
    cfg.validate()
    return cfg


@user_errors_exit_2(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from causal_grpo import io
    io.ensure_writable_dir(args.output_dir)
    from cluster.train import train
    metrics = train(cfg, args.output_dir, num_workers=args.num_workers, address=args.address,
                    gpus_per_worker=args.gpus_per_worker)
    print(f"final checkpoint: {args.output_dir}/final  "
          + (f"(held-out F1-AUC diff vs random {metrics['eval_f1_auc_diff']:+.3f})"
             if "eval_f1_auc_diff" in metrics else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
