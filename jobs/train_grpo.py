"""Phase 1: train the GRPO intervention policy on a curriculum of random SCMs.

Each training episode reads the posterior's features or bootstrap ones, half and half.

    python -m jobs.train_grpo --output-dir grpo_runs/default

Writes ``DIR/step_0/`` (the untrained policy), ``DIR/step_<n>/`` every ``--checkpoint-every``
iterations and ``DIR/final/`` (each with ``policy_params.pkl`` and ``config.json``), and
``DIR/train_log.csv``, one row per update: its ``iteration`` counts from 0, so row n - 1 holds
the update the printed "iteration n" and ``step_<n>/`` end with (and the held-out check after
it). Rerunning the same command resumes from the newest checkpoint (and says so when the
code or library releases changed since it); a finished run is left as it is.

Every option is declared once, on the config field it sets (``causal_grpo.options``): the
training options on ``Phase1Config`` and ``GRPOConfig``, the run's own on :class:`RunOptions`.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os

from causal_grpo import options
from causal_grpo.options import option
from jobs._cli import (ArgumentParser, check_ray_flags, option_type, run_script,
                       share_gpu_with_workers, user_errors_exit_2)

PROG = "train_grpo"


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What the run does beyond the training config: size and budget of the curriculum,
    where it writes, and where it runs."""

    output_dir: str = option("grpo_runs/default", "--output-dir", "checkpoints and train_log.csv")
    max_variables: int = option(15, "--max-variables", "largest SCM of the curriculum "
                                "(the exact posterior's training range)", low=3, high=15)
    episodes: int = option(None, "--episodes", "total training episodes; scales the default "
                           "curriculum (default: unscaled)", type=int, low=1,
                           high=10_000_000)
    num_workers: int = option(0, "--num-workers", "0 = in-process; N = N Ray rollout actors",
                              low=0, high=1024)
    address: str = option(None, "--address", "Ray cluster address (default: RAY_ADDRESS, else "
                          "a local Ray)", type=str)
    gpus_per_worker: float = option(0.0, "--gpus-per-worker", "GPUs per Ray rollout actor",
                                    low=0.0, high=1024.0)


def _declared():
    """(dest, field path or None for RunOptions, Option, default) of every flag."""
    from causal_grpo.phase1 import Phase1Config
    for path, opt, default in options.declared(RunOptions):
        yield path[-1], None, opt, default
    for path, opt, default in options.declared(Phase1Config):
        yield "__".join(path), path, opt, default


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    from causal_grpo.scm_families import PROTOCOLS
    # A family's protocol sets these unless they are given (phase1.with_family_protocol).
    protocol = {dest: [f"{kind.value}: {getattr(p, field)}" for kind, p in PROTOCOLS.items()]
                for dest, field in (("n_observational", "n_observational"),
                                    ("steps_per_episode", "n_interventions"),
                                    ("max_variables", "all_parent_sets_max_d"))}
    for dest, _, opt, default in _declared():
        shown = [] if default is None else [str(getattr(default, "value", default))]
        shown += [f"--scm-family {v}" for v in protocol.get(dest, [])]
        help_text = opt.help + (f" (default {'; '.join(shown)})" if shown else "")
        metavar = ("{" + ",".join(m.value for m in opt.type) + "}"
                   if issubclass(opt.type, enum.Enum) else opt.flag[2:].upper().replace("-", "_"))
        # None marks "not given": a family's protocol may then set the value.
        p.add_argument(opt.flag, dest=dest, type=option_type(opt), default=None,
                       help=help_text, metavar=metavar)
    return p


def config_from_args(args: argparse.Namespace):
    """``(RunOptions, Phase1Config)`` from parsed flags (``--scm-family dense``: its protocol
    where a flag does not say otherwise)."""
    from causal_grpo.phase1 import Phase1Config, with_family_protocol
    given = {dest: getattr(args, dest) for dest, _, _, _ in _declared()
             if getattr(args, dest) is not None}
    run = RunOptions(**{dest: given[dest] for dest, path, _, _ in _declared()
                        if path is None and dest in given})
    from cluster.connect import check_gpus_per_worker
    check_gpus_per_worker(run.gpus_per_worker)
    check_ray_flags(run.address, run.num_workers, run.gpus_per_worker)
    share_gpu_with_workers(run.gpus_per_worker)
    values = {path: given[dest] for dest, path, _, _ in _declared()
              if path is not None and dest in given}
    cfg = with_family_protocol(options.with_values(Phase1Config(), values), run.max_variables,
                               run.episodes, frozenset(given))
    cfg.validate()
    return run, cfg


def refuse_foreign_dir(out_dir: str, dir_flag: str = "--output-dir") -> None:
    """A directory that holds files but no Phase-1 run is someone else's: training would write
    checkpoints among them (a Phase-1 run is step_<n>/, final/ and train_log.csv)."""
    from causal_grpo.errors import UserError
    entries = sorted(n for n in os.listdir(out_dir) if not n.startswith("."))
    ours = [n for n in entries if n in ("final", "train_log.csv")
            or (n.startswith("step_") and n[5:].isdigit())]
    if entries and not ours:
        raise UserError(f"output directory {out_dir} is not empty ({', '.join(entries[:3])}"
                        f"{', ...' if len(entries) > 3 else ''}) and holds no Phase-1 run; "
                        f"use another {dir_flag}")


def check_output_dir(run: RunOptions, cfg, dir_flag: str = "--output-dir"):
    """Refuse now what training would refuse of its directory (``dir_flag`` names it in the
    message) and return what it holds (:class:`causal_grpo.phase1.Resume`). A finished run of
    these settings is only read, so its directory may be read-only."""
    from causal_grpo import io
    from causal_grpo.phase1 import read_resume
    from cluster.run_sweep import cell_device

    read = None
    if os.path.isdir(run.output_dir):
        refuse_foreign_dir(run.output_dir, dir_flag)
        # Under `main`, which takes no training flags, the way out is another directory.
        advice = ({} if dir_flag == "--output-dir" else
                  {"advice": f"use another {dir_flag} (main trains with train_grpo's defaults)"})
        read = read_resume(cfg, run.output_dir,
                           collect=cell_device(run.num_workers, run.gpus_per_worker), **advice)
        if read.finished is not None:
            return read
    io.ensure_writable_dir(run.output_dir, exclusive=True)
    return read


def run(argv: list[str] | None = None, dir_flag: str = "--output-dir") -> int:
    """The job without its one-line error handling (``jobs.main`` runs it under its own, with
    ``dir_flag="--phase1-dir"``: the flag its messages name)."""
    opts, cfg = config_from_args(build_parser().parse_args(argv))
    from causal_grpo import io
    # Refused after its directory was made (a Ray cluster found wanting): none is left behind.
    with io.no_new_dirs_if_refused(opts.output_dir):
        read = check_output_dir(opts, cfg, dir_flag)
        from cluster.train import train
        metrics = train(cfg, opts.output_dir, num_workers=opts.num_workers,
                        address=opts.address, gpus_per_worker=opts.gpus_per_worker,
                        read=read)
    print(f"final checkpoint: {opts.output_dir}/final  "
          + (f"(held-out F1-AUC diff vs random {metrics['eval_f1_auc_diff']:+.3f})"
             if "eval_f1_auc_diff" in metrics else ""))
    return 0


@user_errors_exit_2(PROG)
def main(argv: list[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    run_script(main)
