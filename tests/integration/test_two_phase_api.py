"""The seed document's three steps, end to end, and checkpoint errors at the CLI."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import checkpoint as C
from causal_grpo.active_learning import EpisodeConfig, Method
from causal_grpo.scm_families import easy, medium, resolve_scm
from causal_grpo.surrogate import SurrogateConfig
from causal_grpo.surrogate_bayes import AnalyticConfig
from causal_grpo.sweep import SweepConfig
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
    assert {"final", "step_0", "step_2", "train_log.csv"} <= set(os.listdir(trained))
    for name in ("final", "step_0", "step_2"):
        assert {"policy_params.pkl", "config.json"} <= set(os.listdir(trained / name))
    assert not [n for n in os.listdir(trained) if n.startswith(".tmp")]


def test_seed_three_step_example(trained):
    scm = medium()
    loaded_policy = load_grpo_policy(str(trained / "final"))
    intervention_fn = create_grpo_intervention_fn(loaded_policy=loaded_policy, scm=scm)
    result = run_active_learning(scm=scm, config=EpisodeConfig(n_observational=30, n_interventions=8),
                                 surrogate=None, intervention_fn=intervention_fn)
    slm = result["structure_learning_metrics"]
    assert len(slm["f1_scores"]) == 9 and len(slm["shd_scores"]) == 9
    assert slm["final_f1"] == slm["f1_scores"][-1]
    assert slm["final_f1"] > slm["f1_scores"][0]           # it learns from its interventions
    chosen = [i["variable"] for i in result["interventions"]]
    assert "F" not in chosen and len(chosen) == 8          # never the target
    assert len(intervention_fn.history) == 30 + 8           # the policy saw every sample


def test_the_intervention_values_span_the_scms_own_range(trained):
    """An SCM with interventions in [-1, 1]: the function's bins span that range (they spanned
    [-2, 2] whatever the SCM said, and the episode clipped 3 of 9 bins onto each end)."""
    import dataclasses
    scm = dataclasses.replace(medium(), intervention_range=(-1.0, 1.0))
    fn = create_grpo_intervention_fn(load_grpo_policy(str(trained / "final")), scm)
    fn.observe(np.random.default_rng(0).normal(size=(20, scm.d)))
    values = np.array([fn()[1] for _ in range(30)])
    assert values.min() >= -1.0 and values.max() <= 1.0 and len(set(values.tolist())) > 2
    _, bins = fn.action_distribution()
    assert bins.shape[1] == 9


def test_untrained_policy_is_saved_as_step_0(trained):
    """step_0 is the initial network (init_params of the run's seed), loadable for Phase 2."""
    import jax
    from causal_grpo.phase1 import Phase1Config, init_params
    from causal_grpo.networks import PolicyConfig
    step0, final = load_grpo_policy(str(trained / "step_0")), load_grpo_policy(str(trained / "final"))
    assert step0.config == final.config == PolicyConfig()
    init = init_params(Phase1Config(seed=0))
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(step0.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(step0.params), jax.tree.leaves(final.params)))


def test_seed_api_and_jitted_selector_choose_the_same_actions(trained):
    """The default policy (lookahead on, auto draws): run_active_learning driven by the seed
    API's function and the jitted sweep cell, on the same cells and acting keys, choose the
    same interventions at every step; under posterior settings other than the default (BGE,
    in-degree 1), which the function's lookahead refits with, as the sweep's does."""
    import jax

    from causal_grpo.active_learning import Method, cell_keys
    from causal_grpo.policy import policy_handle, policy_output, refit_posterior
    from causal_grpo.scm_families import easy
    from causal_grpo.surrogate import SurrogateConfig
    from causal_grpo.surrogate_bayes import AnalyticConfig, Score
    from causal_grpo.sweep import Batch, SweepConfig, cell_scm_and_key, run_batch
    loaded = load_grpo_policy(str(trained / "final"))
    assert loaded.config.lookahead and loaded.config.lookahead_prior > 0
    post = AnalyticConfig(score=Score.BGE, max_indegree=1)
    ep = EpisodeConfig(n_observational=20, n_interventions=5,
                       surrogate=SurrogateConfig(analytic=post))
    seeds = (0, 1, 2)
    cfg = SweepConfig(scms=("easy",), methods=(Method.GRPO_ACTIVE,), seeds=3, episode=ep,
                      base_seed=7, batch_size=3)
    jitted = run_batch(Batch("easy", Method.GRPO_ACTIVE, seeds), cfg, policy_handle(loaded),
                       {"easy": easy()})
    for s in seeds:
        key = cell_keys(cell_scm_and_key(easy(), 7, s)[1])["select"]
        fn = create_grpo_intervention_fn(loaded, easy(), capacity=ep.capacity, key=key,
                                         posterior=post)
        res = run_active_learning(easy(), ep, intervention_fn=fn, seed=s, base_seed=7)
        # The distribution it reports is the network's on the lookahead of that posterior.
        # Jitted: run eagerly, the exact DP's small ops take half a minute to dispatch.
        @jax.jit
        def logits(k, params, shapes, buffer, state, step):
            o = fn._programs.obs(shapes, buffer, state, step)
            out = policy_output(k, o, params, loaded.config, refit_posterior(k, o, post), "auto")
            return out[1].var_logits

        np.testing.assert_allclose(fn.action_distribution()[0],
                                   np.asarray(jax.nn.softmax(logits(*fn._args()))), atol=1e-4)
        chosen = [easy().variables.index(i["variable"]) for i in res["interventions"]]
        assert chosen == list(jitted["variable"][s, 1:]), (s, chosen, jitted["variable"][s])
        np.testing.assert_allclose([i["value"] for i in res["interventions"]],
                                   jitted["value"][s, 1:], atol=1e-5)


def test_the_workflows_next_episode_traces_nothing_new(trained):
    """The workflow makes a new intervention function for each episode: the next one, on
    another seed, another target and another intervention range of the same size, reuses the
    compiled programs of the first (tracing and compiling them again was 9 of a `medium`
    episode's 11 s). Counted with JAX's own trace events, which fire even where the persistent
    compilation cache then loads the program."""
    import dataclasses

    from jax._src.dispatch import JAXPR_TRACE_EVENT
    loaded = load_grpo_policy(str(trained / "final"))
    ep = EpisodeConfig(n_observational=8, n_interventions=3)

    def episode(scm, seed):
        fn = create_grpo_intervention_fn(loaded, scm, capacity=ep.capacity, seed=seed)
        run_active_learning(scm, ep, intervention_fn=fn, seed=seed)
        run_active_learning(scm, ep, seed=seed)                  # the random default too

    episode(easy(), 0)
    traced = []

    def listen(event, duration, **kwargs):
        if event == JAXPR_TRACE_EVENT:
            traced.append(kwargs.get("fun_name"))

    other = dataclasses.replace(easy(), target=0, intervention_range=(-1.0, 3.0))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        episode(other, 1)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert traced == []


def test_programs_are_shared_by_functions_of_one_setting_only(trained):
    """Functions of one policy, size and capacity share their compiled programs; another
    capacity gets its own entry (on one entry, each capacity's compile stayed for good)."""
    loaded = load_grpo_policy(str(trained / "final"))
    a, b, c = (create_grpo_intervention_fn(loaded, easy(), capacity=n, seed=s)
               for n, s in ((16, 0), (16, 1), (20, 0)))
    assert a._programs is b._programs and a._programs is not c._programs


def test_benchmark_phase2_times_the_workflow(trained, tmp_path, capsys):
    """Per episode, with the random default and a policy; a family of random graphs, which
    the workflow does not take, is timed vmapped only (it ended with an error and no table)."""
    import pandas as pd

    from jobs import benchmark
    small = ["--surrogates", "analytic", "--seeds", "2", "--n-observational", "5",
             "--n-interventions", "2", "--repeats", "1", "--workflow-episodes", "2"]
    out = tmp_path / "p2.csv"
    assert benchmark.main(["phase2", "--scm", "easy", *small, "--grpo-checkpoint",
                           str(trained / "final"), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert list(rows["workflow"].dropna()) == ["random (default)", "grpo"]
    assert (rows["next_episode_s"].dropna() > 0).all()
    assert benchmark.main(["phase2", "--scm", "er4", *small, "--out", str(out)]) == 0
    assert "er4 workflow: not timed" in capsys.readouterr().out
    assert "workflow" not in pd.read_csv(out)


def test_a_surrogate_too_small_for_the_episode_is_refused_before_it_runs():
    """A neural surrogate keeps `capacity` rows and drops later ones: given one smaller than the
    episode, the run would silently learn from part of its data."""
    from causal_grpo.errors import UserError
    from causal_grpo.surrogate_neural import NeuralConfig, make_neural_surrogate
    sur = make_neural_surrogate(NeuralConfig(), easy().d, capacity=10)
    with pytest.raises(UserError, match=r"keeps 10 rows and the episode has 13 \(8 obs"):
        run_active_learning(easy(), EpisodeConfig(n_observational=8, n_interventions=5),
                            surrogate=sur)


@pytest.mark.parametrize("make, needle", [
    (lambda: EpisodeConfig(n_interventions=-1), "EpisodeConfig.n_interventions must be an "
                                                "integer >= 0, got -1"),
    (lambda: EpisodeConfig(n_observational=2.5), "n_observational must be an integer >= 2"),
    (lambda: EpisodeConfig(n_observational=1), "n_observational must be an integer >= 2"),
    (lambda: run_active_learning(easy(), seed=-1), "seed must be an integer in [0, 4294967295]"),
    (lambda: run_active_learning(easy(), seed="a"), "seed must be an integer, got 'a'"),
    (lambda: run_active_learning(easy(), base_seed=2**40), "base_seed must be an integer in"),
    # Found by a fuzz of the Python API: each ran the wrong thing or failed deep inside.
    (lambda: SurrogateConfig(kind="neurl"), "SurrogateConfig.kind must be one of analytic, "
                                            "neural, got 'neurl'"),
    (lambda: AnalyticConfig(score="foo"), "AnalyticConfig.score must be one of bic, bge"),
    (lambda: AnalyticConfig(penalty=float("nan")), "penalty must be a finite number >= 0"),
    (lambda: AnalyticConfig(max_indegree=-1), "max_indegree must be an integer >= 1, got -1"),
    (lambda: SweepConfig(scms="easy", methods=("random_active",), seeds=2),
     "SweepConfig.scms must be a tuple, got 'easy'"),
    (lambda: SweepConfig(scms=("easy", "easy"), methods=("random_active",), seeds=2),
     "SweepConfig.scms must be non-empty, each once"),
    (lambda: SweepConfig(scms=("easy",), methods=("nope",), seeds=2), "unknown method"),
    (lambda: SweepConfig(scms=("easy",), methods=("random_active",), seeds=0),
     "SweepConfig.seeds must be an integer in [1, "),
    (lambda: SweepConfig(scms=("easy",), methods=("random_active",), seeds=2, batch_size=0),
     "SweepConfig.batch_size must be an integer in [1, "),
    (lambda: SweepConfig(scms=("easy",), methods=("random_active",), seeds=10**9),
     "more than 1000000"),
    (lambda: resolve_scm(None), "an SCM is named by a string or a path to a JSON file, got None"),
    (lambda: run_active_learning(easy(), seed=None), "seed must be an integer, got None"),
    (lambda: run_active_learning(easy(), config=None), "config must be an EpisodeConfig, got "
                                                       "NoneType"),
    (lambda: run_active_learning(easy(), surrogate=SurrogateConfig()),
     "surrogate must be a Surrogate (make_surrogate builds one) or None, got SurrogateConfig"),
    (lambda: run_active_learning(easy(), intervention_fn=lambda: (1, 0.0)),
     "intervention_fn must have observe(values, intervened)"),
    (lambda: EpisodeConfig(surrogate=None), "EpisodeConfig.surrogate must be a SurrogateConfig"),
])
def test_bad_api_input_is_one_user_error_before_any_compute(make, needle):
    from causal_grpo.errors import UserError
    with pytest.raises(UserError) as e:
        make()
    assert needle in str(e.value)


def test_settings_spelt_as_the_clis_spell_them_are_those_settings(tmp_path):
    """A kind or score given as its string was kept as given and compared by identity:
    ``kind="analytic"`` built the neural surrogate, ``score="bge"`` scored BIC. A path object
    names an SCM file as its string does; methods may be named by their strings."""
    import pathlib
    from causal_grpo.surrogate import SurrogateKind
    from causal_grpo.surrogate_bayes import Score
    assert SurrogateConfig(kind="analytic") == SurrogateConfig()
    assert SurrogateConfig(kind="analytic").kind is SurrogateKind.ANALYTIC
    assert AnalyticConfig(score="bge").score is Score.BGE
    cfg = SweepConfig(scms=["easy"], methods=["random_active"], seeds=2)
    assert cfg == SweepConfig(scms=("easy",), methods=(Method.RANDOM,), seeds=2)
    path = tmp_path / "chain.json"
    path.write_text('{"variables": ["x", "y"], "target": "y", "edges": [["x", "y", 1.0]], '
                    '"noise_std": {"x": 1.0, "y": 0.5}}')
    short = EpisodeConfig(n_observational=8, n_interventions=2)
    assert (run_active_learning(easy(), short, seed=np.int64(3))["structure_learning_metrics"]
            == run_active_learning(easy(), short, seed=3)["structure_learning_metrics"])
    by_path, by_name = resolve_scm(pathlib.Path(path)), resolve_scm(str(path))
    assert by_path.to_dict() == by_name.to_dict() and by_path.variables == ("x", "y")


def test_observed_values_beyond_float32s_safe_range_are_refused(trained):
    """The posterior's statistics hold squares of values: rows of 1e20 made every action
    probability NaN while the function still answered variable 0."""
    from causal_grpo.errors import UserError
    fn = create_grpo_intervention_fn(load_grpo_policy(str(trained / "final")), easy())
    x = np.random.default_rng(0).normal(size=(5, easy().d))
    x[2, 1] = 1e20
    with pytest.raises(UserError, match="observe\\(\\) got a value of magnitude 1e\\+20, above "):
        fn.observe(x)
    assert fn.rows_seen == 0


class _Chooses:
    """An intervention function of the seed API's shape that makes one fixed choice."""

    def __init__(self, choice):
        self.choice = choice

    def observe(self, values, intervened):
        pass

    def __call__(self):
        return self.choice


@pytest.mark.parametrize("choice, needle", [
    (None, "returned None: must be \\(variable index, value\\)"),
    (1, "returned 1: must be"),
    ((1, float("nan")), "chose value nan: must be a finite number"),
    ((1.5, 0.0), "chose variable 1.5: must be the index of a non-target variable"),
    ((True, 0.0), "chose variable True"),
])
def test_an_intervention_functions_bad_choice_is_one_user_error(choice, needle):
    """A NaN value was clipped to NaN and the episode went on with F1 0."""
    from causal_grpo.errors import UserError
    with pytest.raises(UserError, match=needle):
        run_active_learning(easy(), EpisodeConfig(n_observational=8, n_interventions=2),
                            intervention_fn=_Chooses(choice))


def test_an_intervention_function_is_for_one_episode(trained):
    """Its history is its episode's: given to a second episode, the policy saw both episodes'
    rows and chose differently on the same data."""
    from causal_grpo.errors import UserError
    fn = create_grpo_intervention_fn(load_grpo_policy(str(trained / "final")), easy())
    for bad in ({"seed": -1}, {"capacity": 0}):
        with pytest.raises(UserError, match=f"{next(iter(bad))} must be an integer in"):
            create_grpo_intervention_fn(load_grpo_policy(str(trained / "final")), easy(), **bad)
    fn.observe(np.zeros((3, easy().d)))
    assert fn.rows_seen == 3
    with pytest.raises(UserError, match="already holds 3 rows of another episode"):
        run_active_learning(easy(), EpisodeConfig(n_observational=8, n_interventions=2),
                            intervention_fn=fn)


@pytest.mark.parametrize("bad, needle", [
    ({"intervention_range": (1, 2, 3)}, "intervention_range must be two numbers"),
    ({"intervention_range": 2.0}, "intervention_range must be two numbers"),
    ({"intervention_range": ("-1", "1")}, "intervention_range must be two numbers"),
    ({"key": 5}, "key must be one JAX PRNG key"),
    ({"key": np.zeros(3, np.uint32)}, "key must be one JAX PRNG key"),
    ({"key": jax.random.split(jax.random.key(0))}, "key must be one JAX PRNG key"),
    ({"posterior": "bic"}, "posterior must be an AnalyticConfig, got str"),
    ({"greedy": "no"}, "greedy must be True or False"),
    ({"intervention_range": (-1e30, 1e30)}, "exceeds the float32-safe 1e\\+15"),
])
def test_the_seed_apis_malformed_arguments_are_one_user_error(trained, bad, needle):
    """Each was a raw TypeError/ValueError/AttributeError, a JAX error at the first call, or
    (greedy="no") silently taken as greedy."""
    from causal_grpo.errors import UserError
    loaded = load_grpo_policy(str(trained / "final"))
    with pytest.raises(UserError, match=needle):
        create_grpo_intervention_fn(loaded, easy(), **bad)


def test_a_checkpoint_path_given_for_a_loaded_policy_is_one_user_error(trained):
    from causal_grpo.errors import UserError
    with pytest.raises(UserError, match=r"got str: load it first, load_grpo_policy\(path\)"):
        create_grpo_intervention_fn(str(trained / "final"), easy())
    for path in (None, b"grpo"):
        with pytest.raises(UserError, match="load_grpo_policy needs a path"):
            load_grpo_policy(path)


@pytest.mark.parametrize("scm, capacity, needle", [
    ("easy", 35, r"keeps 35 rows and the episode has 40 \(30 observational \+ 10"),
    ("medium", 512, "made for an SCM of 8 variables with target 5; this one has 5 with target 3"),
])
def test_an_intervention_function_that_cannot_finish_the_episode_is_refused_first(
        trained, monkeypatch, scm, capacity, needle):
    """A history too small failed when full (after 5 steps here; 482 with the default 512 and
    500 interventions), a function for another SCM after the first choices."""
    from causal_grpo import two_phase
    from causal_grpo.errors import UserError

    def compute(*args, **kwargs):
        raise AssertionError("the episode started")

    fn = create_grpo_intervention_fn(load_grpo_policy(str(trained / "final")), scm,
                                     capacity=capacity)
    monkeypatch.setattr(two_phase, "start_episode", compute)
    with pytest.raises(UserError, match=needle):
        run_active_learning(easy(), EpisodeConfig(n_observational=30, n_interventions=10),
                            intervention_fn=fn)


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
    """... and drops what a killed run was writing (an hour old), not what a live one is."""
    import time
    before = (trained / "final" / "policy_params.pkl").read_bytes()
    for name in (".tmp-ckpt-dead", ".old-ckpt-dead", ".tmp-ckpt-live"):
        (trained / name).mkdir()
        (trained / name / "x").write_text("partial")
        if name.endswith("dead"):
            os.utime(trained / name, (time.time() - 3600,) * 2)
    assert train_grpo.main(["--output-dir", str(trained), "--episodes", "48", "--max-variables", "5",
                            "--steps-per-episode", "4", "--group-size", "4",
                            "--eval-every", "0", "--checkpoint-every", "2"]) == 0
    assert (trained / "final" / "policy_params.pkl").read_bytes() == before
    assert sorted(p.name for p in trained.glob(".*ckpt*")) == [".tmp-ckpt-live"]
    shutil.rmtree(trained / ".tmp-ckpt-live")


def test_resuming_with_other_flags_is_refused(trained):
    r = subprocess.run([sys.executable, "-m", "jobs.train_grpo", "--output-dir", str(trained),
                        "--episodes", "48", "--max-variables", "5", "--group-size", "8"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "different configuration" in r.stderr, r.stderr
    assert "grpo.group_size: 4 there, 8 here" in r.stderr, r.stderr


def _without(config_json, *keys):
    import json
    cfg = json.loads(config_json.read_text())
    for k in keys:
        del cfg["training"][k]
    config_json.write_text(json.dumps(cfg))


def test_a_run_from_before_a_setting_existed(trained, tmp_path, capsys):
    """Finished before a setting (here: the numerics, rollout_chunk) was recorded, a run is
    complete as it stands; unfinished, it is refused, naming what it lacks, rather than
    continued under settings it did not start with. Other numerics are refused too."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _without(run / "final" / "config.json", "numerics", "rollout_chunk")
    assert train_grpo.main(["--output-dir", str(run)] + TRAIN_ARGS) == 0
    assert ("training already complete (trained before its settings had numerics, "
            "rollout_chunk)") in capsys.readouterr().out
    shutil.rmtree(run / "final")
    _without(_newest_step(run) / "config.json", "numerics")
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(run)] + TRAIN_ARGS)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "numerics.default_matmul_precision: absent there" in err, err
    step = _newest_step(run) / "config.json"
    cfg = json.loads((trained / "final" / "config.json").read_text())
    cfg["training"]["numerics"]["threefry_partitionable"] = False
    step.write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(run)] + TRAIN_ARGS)
    err = capsys.readouterr().err
    assert "numerics.threefry_partitionable: false there, true here" in err, err


def test_numerics_follow_jaxs_environment():
    """Including the offset JAX adds to every seed, which changes every cell's data: keyed when
    set, absent from the key at its default (so keys made before it counted stay valid), and
    always passed on to Ray workers."""
    code = ("from causal_grpo.jaxcache import numerics, numerics_env\n"
            "print(numerics(), numerics_env())")
    env = dict(os.environ, JAX_THREEFRY_PARTITIONABLE="0", JAX_DEFAULT_PRNG_IMPL="rbg",
               JAX_RANDOM_SEED_OFFSET="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120).stdout
    assert "'default_prng_impl': 'rbg'" in out and "'threefry_partitionable': False" in out, out
    assert "'random_seed_offset': 3" in out and "'JAX_RANDOM_SEED_OFFSET': '3'" in out, out
    env.pop("JAX_RANDOM_SEED_OFFSET")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120).stdout
    assert "'default_prng_impl': 'rbg'" in out and "'random_seed_offset'" not in out, out
    assert "'JAX_RANDOM_SEED_OFFSET': '0'" in out, out     # so a node's own cannot leak in


TRAIN_ARGS = ["--episodes", "48", "--max-variables", "5", "--steps-per-episode", "4",
              "--group-size", "4", "--eval-every", "0", "--checkpoint-every", "2"]


def test_a_killed_and_resumed_training_keeps_one_log_row_per_iteration(trained, tmp_path):
    # With a checkpoint every iteration and the log written every 10, a run killed at its
    # third iteration resumed from step_2 with none of the rows before it; and it checked the
    # held-out SCM once more, at the first iteration it ran. The fixture's training (same
    # programs) has compiled what this one runs.
    import dataclasses

    import pandas as pd

    from causal_grpo import phase1 as P

    _, cfg = train_grpo.config_from_args(train_grpo.build_parser().parse_args(
        TRAIN_ARGS + ["--checkpoint-every", "1", "--episodes", "80", "--output-dir",
                      str(tmp_path)]))
    cfg = dataclasses.replace(cfg, eval_every=2, eval_scm="easy", eval_seeds=2, eval_steps=2)
    assert cfg.iterations == 5
    trainer, calls = P.Trainer(cfg), []

    def killed_at_the_third(stage, params, keys):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return trainer._collect_local(stage, params, keys)

    with pytest.raises(KeyboardInterrupt):
        P.run_training(cfg, str(tmp_path), collect_fn=killed_at_the_third, log=lambda s: None)
    P.run_training(cfg, str(tmp_path), log=lambda s: None)
    # The resumed run went on from the checkpoint's parameters and optimiser state: it ends
    # where an uninterrupted run ends, bit for bit.
    whole = tmp_path.parent / f"{tmp_path.name}_uninterrupted"
    P.run_training(cfg, str(whole), log=lambda s: None)
    resumed, uninterrupted = (C.load_grpo_policy(str(d / "final")).params
                              for d in (tmp_path, whole))
    for got, want in zip(jax.tree_util.tree_leaves(resumed),
                         jax.tree_util.tree_leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    rows = pd.read_csv(tmp_path / "train_log.csv")
    assert rows["iteration"].tolist() == list(range(cfg.iterations))
    assert rows["elapsed_s"].is_monotonic_increasing
    checked = rows.loc[rows["eval_f1_auc_policy"].notna(), "iteration"].tolist()
    assert checked == [0] + [i for i in range(1, cfg.iterations)
                             if (i + 1) % 2 == 0 or i + 1 == cfg.iterations], checked


def test_a_non_finite_reward_stops_training_before_it_is_trained_on(trained, tmp_path):
    """The guard the lessons ask for: a NaN reward stops the run at that iteration with its
    name, and no checkpoint after the untrained one holds what it would have trained."""
    from causal_grpo import phase1 as P

    _, cfg = train_grpo.config_from_args(train_grpo.build_parser().parse_args(
        TRAIN_ARGS + ["--output-dir", str(tmp_path)]))
    trainer = P.Trainer(cfg)

    def nan_rewards(stage, params, keys):
        batch, stats = trainer._collect_local(stage, params, keys)
        return batch, stats | {"reward": jnp.float32(np.nan)}

    with pytest.raises(FloatingPointError, match="non-finite reward at iteration 0"):
        P.run_training(cfg, str(tmp_path), collect_fn=nan_rewards, log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0"]


@pytest.fixture
def nothing_built(trained, monkeypatch):
    """The trained run's config, with the trainer, the held-out check and Ray's rollout
    actors made to fail if built."""
    import cluster.grpo_driver
    from causal_grpo import phase1 as P

    def started(*args, **kwargs):
        raise AssertionError("built before what the directory holds was checked")

    for module, name in ((P, "Trainer"), (P, "Evaluator"), (cluster.grpo_driver, "RolloutPool")):
        monkeypatch.setattr(module, name, started)
    return train_grpo.config_from_args(train_grpo.build_parser().parse_args(
        TRAIN_ARGS + ["--output-dir", str(trained)]))[1]


def test_a_refused_resume_builds_nothing_and_starts_no_ray(trained, tmp_path, nothing_built):
    """Other settings or a damaged file are refused before the trainer, the held-out check
    (which compiles and runs its episodes) or Ray's rollout actors exist; a finished run
    starts no Ray either."""
    import dataclasses

    from causal_grpo.errors import UserError
    from cluster.train import train

    cfg = nothing_built
    finished = C.read_config(str(trained / "final" / "config.json"))["metrics"]
    assert train(cfg, str(trained), num_workers=1) == finished
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "final")
    for workers in (0, 1):
        with pytest.raises(UserError, match="different configuration"):
            train(dataclasses.replace(cfg, seed=1), str(run), num_workers=workers)
    (_newest_step(run) / C.TRAINER_FILE).write_bytes(b"damaged")
    for workers in (0, 1):
        with pytest.raises(UserError, match="unreadable"):
            train(cfg, str(run), num_workers=workers)


def test_a_run_does_not_go_on_on_another_kind_of_device(trained, tmp_path, nothing_built,
                                                        monkeypatch):
    """GPU and CPU kernels differ in their last bits: a CPU run's checkpoint is refused for
    rollouts on GPU workers or updates on a GPU driver (before Ray or the trainer); a finished
    run stays finished; a CPU run's record is what it was before devices were recorded."""
    import jax

    from causal_grpo import phase1 as P
    from causal_grpo.errors import UserError
    from cluster.train import train

    cfg = nothing_built
    assert "device" not in P.run_record(cfg)
    assert P.run_record(cfg, "gpu")["device"] == {"rollouts": "gpu", "updates": "cpu"}
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "final")
    with pytest.raises(UserError, match="different configuration.*device"):
        train(cfg, str(run), num_workers=1, gpus_per_worker=0.5)
    finished = C.read_config(str(trained / "final" / "config.json"))["metrics"]
    assert train(cfg, str(trained), num_workers=1, gpus_per_worker=0.5) == finished
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(UserError, match="different configuration.*device"):
        train(cfg, str(run))
    assert train(cfg, str(trained)) == finished


def test_a_refused_resume_names_the_values_that_differ_and_needs_the_settings(
        trained, tmp_path, nothing_built):
    """Settings only added since (sorted first, here a whole section) hid the value that
    differs behind "and N more"; a checkpoint without its config.json was resumed unchecked."""
    import dataclasses

    from causal_grpo.errors import UserError
    from cluster.train import train

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "final")
    newest = _newest_step(run)
    _without(newest / "config.json", "bootstrap")
    with pytest.raises(UserError, match="different configuration \\(seed: 0 there, 1 here; "):
        train(dataclasses.replace(nothing_built, seed=1), str(run))
    (newest / "config.json").unlink()
    with pytest.raises(UserError, match=f"{newest.name} has no config.json .* remove"):
        train(nothing_built, str(run))


def test_a_resume_under_other_code_goes_on_and_says_so(trained, tmp_path, nothing_built):
    """A checkpoint written by other code or library releases is resumed (refusing would throw
    its iterations away), but the note names what moved; the same versions say nothing."""
    import json

    from causal_grpo import phase1 as P

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "final")
    assert "versions" not in P.read_resume(nothing_built, str(run)).note
    step = _newest_step(run) / "config.json"
    cfg = json.loads(step.read_text())
    assert cfg["versions"] == C.versions()
    cfg["versions"]["library"] = "0123abcd"
    del cfg["versions"]["jaxlib"]
    step.write_text(json.dumps(cfg))
    got = P.read_resume(nothing_built, str(run))
    assert got.state is not None and got.start == int(step.parent.name[5:])
    assert "library 0123abcd there" in got.note and "jaxlib unrecorded there" in got.note, got.note
    assert "optax" not in got.note


def _newest_step(run):
    return max((p for p in run.glob("step_*") if (p / C.TRAINER_FILE).exists()),
               key=lambda p: int(p.name[5:]))


@pytest.mark.parametrize("finished", [True, False])
def test_a_removed_untrained_policy_is_rebuilt_as_it_was(trained, tmp_path, capsys, finished):
    """The remedy for a damaged step_0/ (removing it) loses nothing: the untrained policy is a
    function of the run's settings, rebuilt on the next run, finished or not; it was written
    only before the first update, so a removed one stayed missing and eval refused the run."""
    import numpy as np

    from causal_grpo.checkpoint import load_grpo_policy
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = load_grpo_policy(str(run / "step_0"))
    (run / "step_0" / C.PARAMS_FILE).write_bytes(b"\x80\x04garbage")
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(run)] + TRAIN_ARGS)
    assert e.value.code == 2
    assert f"remove {run}/step_0 to rebuild it" in capsys.readouterr().err
    shutil.rmtree(run / "step_0")
    if not finished:
        shutil.rmtree(run / "final")
    assert train_grpo.main(["--output-dir", str(run)] + TRAIN_ARGS) == 0
    assert f"{run}/step_0 rebuilt from the run's settings" in capsys.readouterr().out
    after = load_grpo_policy(str(run / "step_0"))
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(a, b)
    assert after.metadata["metrics"] == before.metadata["metrics"]


@pytest.mark.parametrize("damage, needle", [
    ("final config not json", "config.json is not valid JSON"),
    ("final config without metrics", "has no metrics"),
    ("final policy truncated", "final/policy_params.pkl is truncated or corrupt"),
    ("final policy missing", "no policy_params.pkl in checkpoint directory"),
    ("untrained policy truncated", "step_0/policy_params.pkl is truncated or corrupt"),
    ("final untrained policy truncated", "step_0/policy_params.pkl is truncated or corrupt"),
    ("step config not utf-8", "is not UTF-8"),
    ("trainer state truncated", "trainer_state.npz is unreadable"),
    ("train log garbage", "train_log.csv is unreadable"),
    ("train log empty", "train_log.csv is unreadable"),
    ("train log elapsed not a number", "train_log.csv is unreadable"),
    ("trainer state iteration not a number", "trainer_state.npz is unreadable"),
    ("trainer state iteration -1", "holds iteration -1 of"),
])
def test_a_damaged_run_directory_is_one_line_exit_2_on_resume(trained, tmp_path, capsys,
                                                              damage, needle):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    if not damage.startswith("final"):
        shutil.rmtree(run / "final")                 # an interrupted run: resumes from a step
    if damage.endswith("policy truncated"):
        pkl = run / ("step_0" if "untrained" in damage else "final") / C.PARAMS_FILE
        pkl.write_bytes(pkl.read_bytes()[:1000])
    elif damage == "final policy missing":
        (run / "final" / C.PARAMS_FILE).unlink()
    elif damage == "final config not json":
        (run / "final" / "config.json").write_text("{")
    elif damage == "final config without metrics":
        cfg = json.loads((run / "final" / "config.json").read_text())
        del cfg["metrics"]
        (run / "final" / "config.json").write_text(json.dumps(cfg))
    elif damage == "step config not utf-8":
        (_newest_step(run) / "config.json").write_bytes(b"\xff\xfe{")
    elif damage == "trainer state truncated":
        state = _newest_step(run) / C.TRAINER_FILE
        state.write_bytes(state.read_bytes()[:100])
    elif damage.startswith("trainer state iteration"):
        import numpy as np
        path = _newest_step(run) / C.TRAINER_FILE
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["iteration"] = np.array([1, 1] if damage.endswith("number") else -1)
        np.savez(path, **arrays)
    elif damage == "train log elapsed not a number":
        import pandas as pd
        log = pd.read_csv(run / "train_log.csv")
        log["elapsed_s"] = "abc"
        log.to_csv(run / "train_log.csv", index=False)
    else:
        (run / "train_log.csv").write_text("" if damage.endswith("empty") else '"a,\n1,2,3\n')
    with pytest.raises(SystemExit) as e:
        train_grpo.main(["--output-dir", str(run)] + TRAIN_ARGS)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


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
