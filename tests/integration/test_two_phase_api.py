"""The seed document's three steps, end to end, and checkpoint errors at the CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

from causal_grpo import checkpoint as C
from causal_grpo.active_learning import EpisodeConfig
from causal_grpo.scm_families import medium
from causal_grpo.two_phase import (create_grpo_intervention_fn, load_grpo_policy,
                                   run_active_learning)
from jobs import train_grpo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real (short) Phase-1 run through the CLI."""
    out = tmp_path_factory.mktemp("grpo")
    assert train_grpo.main(["--output-dir", str(out), "--episodes", "48", "--max-variables", "5",
                            "--steps-per-episode", "4", "--group-size", "4",
                            "--eval-every", "0", "--checkpoint-every", "2"]) == 0
    return out


def test_training_writes_complete_checkpoints(trained):
    assert {"final", "step_2", "train_log.csv"} <= set(os.listdir(trained))
    for name in ("final", "step_2"):
        assert {"policy_params.pkl", "config.json"} <= set(os.listdir(trained / name))
    assert not [n for n in os.listdir(trained) if n.startswith(".tmp")]


def test_seed_three_step_example(trained):
    scm = medium()
    loaded_policy = load_grpo_policy(str(trained / "final"))
    intervention_fn = create_grpo_intervention_fn(loaded_policy=loaded_policy, scm=scm,
                                                  intervention_range=(-2.0, 2.0))
    result = run_active_learning(scm=scm, config=EpisodeConfig(n_observational=30, n_interventions=8),
                                 surrogate=None, intervention_fn=intervention_fn)
    slm = result["structure_learning_metrics"]
    assert len(slm["f1_scores"]) == 9 and len(slm["shd_scores"]) == 9
    assert slm["final_f1"] == slm["f1_scores"][-1]
    assert slm["final_f1"] > slm["f1_scores"][0]           # it learns from its interventions
    chosen = [i["variable"] for i in result["interventions"]]
    assert "F" not in chosen and len(chosen) == 8          # never the target
    assert len(intervention_fn.history) == 30 + 8           # the policy saw every sample


def test_random_default_matches_the_jitted_sweep_data():
    """run_active_learning and the jitted loop draw the same observational data per seed."""
    res = run_active_learning("medium", EpisodeConfig(n_observational=30, n_interventions=0), seed=3)
    from causal_grpo.sweep import Batch, SweepConfig, run_batch
    from causal_grpo.active_learning import Method
    cfg = SweepConfig(scms=("medium",), methods=(Method.RANDOM,), seeds=4,
                      episode=EpisodeConfig(n_observational=30, n_interventions=0), batch_size=4)
    arr = run_batch(Batch("medium", Method.RANDOM, (0, 1, 2, 3)), cfg, None, {"medium": medium()})
    # Same data; the vmapped scan and the step-by-step path differ only in float32 rounding.
    np.testing.assert_allclose(arr["final_probs"][3], res["final_edge_probs"], atol=5e-4)


def test_resuming_a_finished_run_changes_nothing(trained):
    before = (trained / "final" / "policy_params.pkl").read_bytes()
    assert train_grpo.main(["--output-dir", str(trained), "--episodes", "48", "--max-variables", "5",
                            "--steps-per-episode", "4", "--group-size", "4",
                            "--eval-every", "0", "--checkpoint-every", "2"]) == 0
    assert (trained / "final" / "policy_params.pkl").read_bytes() == before


def test_resuming_with_other_flags_is_refused(trained):
    r = subprocess.run([sys.executable, "-m", "jobs.train_grpo", "--output-dir", str(trained),
                        "--episodes", "48", "--max-variables", "5", "--group-size", "8"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "different configuration" in r.stderr, r.stderr


def test_a_run_from_before_new_config_fields_still_resumes(trained, tmp_path, capsys):
    """Fields added to the training config later (with defaults that keep the old behaviour)
    do not make an older finished run look like a different one."""
    import json
    import shutil
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    for name in os.listdir(old):
        path = old / name / "config.json"
        if path.exists():
            cfg = json.loads(path.read_text())
            del cfg["training"]["teacher"], cfg["training"]["grpo"]["distill_coef"]
            path.write_text(json.dumps(cfg))
    args = ["--output-dir", str(old), "--episodes", "48", "--max-variables", "5",
            "--steps-per-episode", "4", "--group-size", "4", "--eval-every", "0",
            "--checkpoint-every", "2"]
    assert train_grpo.main(args) == 0
    assert "training already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:        # a real difference is still refused
        train_grpo.main(args + ["--distill-coef", "1"])
    assert e.value.code == 2 and "different configuration" in capsys.readouterr().err


def test_missing_fields_whose_default_changed_read_as_their_old_value():
    """A run from before the lookahead existed ran without it: it must not be mistaken for a
    run with today's default (lookahead on), while other new fields take their defaults."""
    from causal_grpo.phase1 import with_new_defaults
    stored = {"policy": {"hidden": 64}, "seed": 0}
    defaults = {"policy": {"hidden": 64, "lookahead": 1, "lookahead_prior": 2.0, "data_stats": 0},
                "seed": 0, "teacher": {"draws": 2}}
    assert with_new_defaults(stored, defaults) == {
        "policy": {"hidden": 64, "lookahead": 0, "lookahead_prior": 0.0, "data_stats": 0},
        "seed": 0, "teacher": {"draws": 2}}


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_bad_checkpoint_at_the_cli_is_one_line_exit_2(trained, tmp_path, damage):
    ck = tmp_path / "ck"
    if damage == "corrupt":
        ck.mkdir()
        (ck / "policy_params.pkl").write_bytes(b"\x80\x04garbage")
    r = subprocess.run([sys.executable, "-m", "jobs.two_phase_training", "--grpo-checkpoint",
                        str(ck), "--compare", "--scm-type", "easy", "--output-dir",
                        str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("not found" if damage == "missing" else "corrupt") in r.stderr
    assert not (tmp_path / "o" / "steps.csv").exists()


@pytest.mark.parametrize("args, needle", [
    (["--distill-coef", "-1"], "--distill-coef"),
    (["--distill-coef", "nan"], "--distill-coef"),
    (["--teacher-draws", "0"], "--teacher-draws"),
    (["--teacher-temperature", "0"], "--teacher-temperature"),
    (["--teacher-source", "psychic"], "--teacher-source"),
    (["--lookahead-prior", "-1"], "--lookahead-prior"),
    (["--no-lookahead", "--lookahead-prior", "1"], "--lookahead-prior needs --lookahead"),
])
def test_bad_teacher_flags_are_one_line_exit_2(args, needle, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(out)] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()
