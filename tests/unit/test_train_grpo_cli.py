"""train_grpo's flags: generated from the config fields, validated at parse time, one line + exit 2."""

import dataclasses
import re

import pytest

from causal_grpo import grpo
from causal_grpo.errors import UserError
from causal_grpo.phase1 import DEFAULT_CURRICULUM, Phase1Config
from causal_grpo.scm_families import GraphKind
from jobs import train_grpo

KEPT = {"--max-variables", "--scm-family", "--steps-per-episode", "--n-observational",
        "--group-size", "--episodes", "--num-workers", "--address", "--gpus-per-worker",
        "--output-dir", "--seed", "--checkpoint-every", "--eval-every", "--learning-rate",
        "--clip-eps", "--entropy-coef", "--kl-coef", "--rollout-chunk"}


def test_help_lists_exactly_the_kept_options(capsys):
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--help"])
    assert e.value.code == 0
    flags = set(re.findall(r"^\s+(--[a-z-]+)", capsys.readouterr().out, re.M))
    assert flags == KEPT          # plus -h, --help


def test_flags_set_the_fields_they_are_declared_on(tmp_path):
    run, cfg = train_grpo.config_from_args(train_grpo.build_parser().parse_args([
        "--output-dir", str(tmp_path), "--max-variables", "5", "--episodes", "96",
        "--scm-family", "er", "--group-size", "4", "--clip-eps", "0.3", "--kl-coef", "0.5",
        "--entropy-coef", "0", "--learning-rate", "1e-3", "--seed", "7",
        "--steps-per-episode", "3", "--n-observational", "12", "--eval-every", "0",
        "--checkpoint-every", "4", "--num-workers", "2", "--gpus-per-worker", "0.5"]))
    assert (run.output_dir, run.max_variables, run.episodes, run.num_workers,
            run.gpus_per_worker) == (str(tmp_path), 5, 96, 2, 0.5)
    assert cfg.grpo == dataclasses.replace(grpo.GRPOConfig(), group_size=4, clip_eps=0.3,
                                           kl_coef=0.5, entropy_coef=0.0, learning_rate=1e-3)
    assert (cfg.graph_kind, cfg.seed, cfg.steps_per_episode, cfg.n_observational,
            cfg.eval_every, cfg.checkpoint_every) == (GraphKind.ER, 7, 3, 12, 0, 4)
    # Only the first stage has SCMs of <= 5 variables: its 16 episodes per iteration x 6.
    assert [s.sizes for s in cfg.curriculum] == [(3, 4, 5)]
    assert cfg.curriculum[0].iterations * cfg.curriculum[0].episodes == 96
    # No flags: the library's defaults, the curriculum unscaled.
    _, default = train_grpo.config_from_args(train_grpo.build_parser().parse_args([]))
    assert default == Phase1Config() and default.curriculum == DEFAULT_CURRICULUM


@pytest.mark.parametrize("args, needle", [
    (["--entropy-coef", "nan"], "--entropy-coef must be a finite number"),
    (["--kl-coef", "inf"], "--kl-coef must be a finite number"),
    (["--kl-coef", "-0.1"], "--kl-coef must be a finite number in [0, 100]"),
    (["--entropy-coef", "-1"], "--entropy-coef must be a finite number in [0, 100]"),
    (["--learning-rate", "0"], "--learning-rate must be a finite number in (0, 1]"),
    (["--learning-rate=-3e-4"], "--learning-rate must be a finite number in (0, 1]"),
    (["--clip-eps", "5"], "--clip-eps must be a finite number in (0, 1)"),
    (["--clip-eps", "0"], "--clip-eps must be a finite number in (0, 1)"),
    (["--clip-eps", "1"], "--clip-eps must be a finite number in (0, 1)"),
    (["--group-size", "1"], "--group-size must be an integer in [2, 256]"),
    (["--group-size", "4.5"], "--group-size must be an integer"),
    (["--max-variables", "16"], "--max-variables must be an integer in [3, 15]"),
    (["--episodes", "1000000000"], "--episodes must be an integer in [1, 10000000]"),
    (["--seed", "1180591620717411303424"], "--seed must be an integer in [0, 2147483647]"),
    (["--steps-per-episode", "0"], "--steps-per-episode must be an integer in [1, 200]"),
    (["--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number"),
    (["--gpus-per-worker", "1.5"], "--gpus-per-worker above 1 must be a whole number"),
    (["--scm-family", "psychic"], "--scm-family must be one of"),
    (["--output-dir", ""], "--output-dir must not be empty"),
    (["--output-dir", "  "], "--output-dir must not be empty or blank"),
    (["--distill-coef", "1"], "unrecognized arguments: --distill-coef"),
])
def test_a_bad_value_is_one_line_and_exit_2_before_any_work(args, needle, tmp_path, capsys):
    out = tmp_path / "run"
    argv = (["--output-dir", str(out)] if "--output-dir" not in args else []) + args
    with pytest.raises(SystemExit) as e:
        train_grpo.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_a_directory_of_other_files_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a Phase-1 run")
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "holds no Phase-1 run" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_config_built_in_code_is_checked_against_the_same_bounds():
    with pytest.raises(UserError, match="--clip-eps must be a finite number in"):
        Phase1Config(grpo=grpo.GRPOConfig(clip_eps=1.5)).validate()
    with pytest.raises(UserError, match="--seed must be an integer"):
        Phase1Config(seed=0.5).validate()
    Phase1Config().validate()


def test_the_dense_family_trains_in_its_own_protocol(tmp_path):
    import jax

    from causal_grpo.phase1 import sample_stage_scm
    parse = train_grpo.build_parser().parse_args
    _, cfg = train_grpo.config_from_args(parse(["--scm-family", "dense"]))
    # 50 observational samples + 10 interventions in [-1, 1], every parent set scored, SCMs
    # of at most 10 variables, the held-out check on the same family.
    assert (cfg.n_observational, cfg.steps_per_episode, cfg.surrogate.max_indegree,
            cfg.eval_scm) == (50, 10, 9, "dense8")
    assert max(s.d_pad for s in cfg.curriculum) == 10
    scm = sample_stage_scm(jax.random.PRNGKey(0), cfg.curriculum[-1], cfg)
    assert (float(scm.low), float(scm.high)) == (-1.0, 1.0)
    # A flag that is given wins over the protocol; other families keep the defaults.
    _, cfg = train_grpo.config_from_args(parse(["--scm-family", "dense",
                                                "--n-observational", "30"]))
    assert (cfg.n_observational, cfg.steps_per_episode) == (30, 10)
    _, er = train_grpo.config_from_args(parse(["--scm-family", "er"]))
    assert (er.n_observational, er.surrogate.max_indegree, er.eval_scm) == (30, 4, "er8")
    scm = sample_stage_scm(jax.random.PRNGKey(0), er.curriculum[-1], er)
    assert (float(scm.low), float(scm.high)) == (-2.0, 2.0)


def test_a_dense_run_beyond_its_protocol_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(out), "--scm-family", "dense",
                         "--max-variables", "12"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "at most 10 variables" in err[0], err
    assert not out.exists()
