"""Every class of bad input: one line on stderr, exit code 2, nothing written, before compute.

The CLIs run in-process with the sweep replaced by a function that fails the test, so a
refusal that came only after the compute (as on main at 465dede) cannot pass.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import io
from causal_grpo.scm import MAX_ABS_VALUE, SCMSpec, propagate, single_do, value_bounds
from causal_grpo.scm_families import MAX_JSON_BYTES, MAX_NAME_CHARS, load_scm_json
from jobs import _cli, benchmark, two_phase_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The reproduction flags.
BASE = ["--seeds", "2", "--n-interventions", "5", "--num-workers", "0", "--quiet", "--no-plots"]
TOY = {"name": "toy", "variables": ["A", "B", "C"], "target": "C",
       "edges": [["A", "B", 1.5], ["B", "C", -0.5]], "noise_std": 1.0}


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    import cluster.run_sweep

    def compute(*args, **kwargs):
        raise AssertionError("bad input reached the compute")

    monkeypatch.setattr(cluster.run_sweep, "run_sweep", compute)


def refused(capsys, tmp_path, *args, main=two_phase_training.main, output=True) -> str:
    """Run a CLI that must refuse ``args``; return its one stderr line."""
    out = tmp_path / "out"
    argv = list(args) + (["--output-dir", str(out)] if output else [])
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as ei:
        main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert ei.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()
    assert elapsed < 30, f"refusal took {elapsed:.0f} s"
    return lines[0]


def scm_file(tmp_path, obj, name="scm.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


# --------------------------------------------------------------------------- 1. magnitudes

def chain(n: int, coef: float) -> dict:
    vs = [f"X{i}" for i in range(n)]
    return {"name": "chain", "variables": vs, "target": vs[-1], "noise_std": 1.0,
            "edges": [[vs[i], vs[i + 1], coef] for i in range(n - 1)]}


@pytest.mark.parametrize("obj, variable", [
    ({**TOY, "edges": [["A", "B", 1e30], ["B", "C", 1.0]]}, "variable B"),
    ({**TOY, "edges": [["A", "B", 1.0], ["B", "C", 1e300]]}, "variable C"),
    ({**TOY, "noise_std": {"A": 1.0, "B": 1e30, "C": 1.0}}, "variable B"),
    ({**TOY, "intervention_range": [-1e30, 1.0]}, "variable A"),
    # Each factor is harmless; together they overflow. The bound b_k = 3 (3^(k+1) - 1)
    # first exceeds 1e15 at k = 30.
    (chain(40, 3.0), "variable X30"),
    ({**TOY, "edges": [["A", "B", 1e-45]]}, "edge A->B"),
    ({**TOY, "noise_std": {"A": 1.0, "B": 1e-20, "C": 1.0}}, "of B"),
], ids=["coef-1e30", "coef-1e300", "noise-1e30", "range-1e30", "long-path", "coef-underflow",
        "noise-underflow"])
def test_scm_numbers_that_overflow_float32_are_refused_at_load(capsys, tmp_path, obj, variable):
    line = refused(capsys, tmp_path, *BASE, "--scm-type", scm_file(tmp_path, obj))
    assert variable in line and "float32" in line, line


def test_value_bounds_hand_computed():
    # A -> B (2), A -> C (-1), B -> C (0.5); noise 1, 0.5, 2; do-values in [-3, 1].
    w = np.array([[0, 2.0, -1.0], [0, 0, 0.5], [0, 0, 0]])
    b = value_bounds(w, np.array([1.0, 0.5, 2.0]), (-3.0, 1.0))
    # max(3, 6 * noise + sum |w| b_parent): A = 6, B = 3 + 2 * 6, C = 12 + 6 + 0.5 * 15.
    np.testing.assert_allclose(b, [6.0, 15.0, 25.5])


def test_value_bounds_hold_for_simulated_samples():
    """Brute force: observational and every single-variable do at both ends of the range."""
    rng = np.random.default_rng(0)
    d = 6
    w = np.triu(rng.uniform(-2, 2, (d, d)) * (rng.random((d, d)) < 0.6), 1)
    spec = SCMSpec("r", tuple("ABCDEF"), d - 1, w, rng.uniform(0.2, 2.0, d), (-4.0, 3.0))
    scm = spec.to_scm()
    eps = jax.random.normal(jax.random.PRNGKey(0), (200_000, d))
    masks, values = [jnp.zeros(d, bool)], [jnp.zeros(d)]
    for v in range(d):
        for x in spec.intervention_range:
            m, val = single_do(d, v, x)
            masks.append(m)
            values.append(val)
    run = jax.jit(jax.vmap(jax.vmap(propagate, (None, 0, None, None)), (None, None, 0, 0)))
    x = np.asarray(run(scm, eps, jnp.stack(masks), jnp.stack(values)))
    reached = np.abs(x).max(axis=(0, 1))
    bound = value_bounds(spec.weights, spec.noise_std, spec.intervention_range)
    assert np.all(reached <= bound), (reached, bound)
    assert np.all(reached > bound / 20)  # and not vacuous


def test_scm_just_under_the_bound_runs_to_finite_metrics():
    """The safety level is safe: values near it still give a finite posterior and metrics."""
    from causal_grpo.active_learning import EpisodeConfig, Method
    from causal_grpo.sweep import Batch, SweepConfig, run_batch

    spec = SCMSpec("edge", ("A", "B", "C"), 2, np.array([[0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]]),
                   np.full(3, 0.99 * MAX_ABS_VALUE / 18), (-2.0, 2.0))
    assert 0.9 * MAX_ABS_VALUE < value_bounds(spec.weights, spec.noise_std,
                                              spec.intervention_range).max() <= MAX_ABS_VALUE
    cfg = SweepConfig(("edge",), (Method.RANDOM,), 2, EpisodeConfig(10, 5), batch_size=2)
    out = run_batch(Batch("edge", Method.RANDOM, (0, 1)), cfg, sources={"edge": spec})
    assert np.all(np.isfinite(out["final_probs"]))  # run_batch itself checks f1/shd/expected_shd


# --------------------------------------------------------------------------- 2. JSON files

def test_json_nested_200000_deep(capsys, tmp_path):
    path = scm_file(tmp_path, "[" * 200_000 + "]" * 200_000)
    assert "nested too deeply" in refused(capsys, tmp_path, *BASE, "--scm-type", path)


def test_json_larger_than_the_read_bound(capsys, tmp_path):
    path = scm_file(tmp_path, json.dumps({**TOY, "pad": "x" * MAX_JSON_BYTES}))
    assert "larger than 32 MiB" in refused(capsys, tmp_path, *BASE, "--scm-type", path)


def test_json_not_utf8(capsys, tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps({**TOY, "variables": ["\u00c4", "B", "C"]},
                                ensure_ascii=False).encode("latin-1"))
    line = refused(capsys, tmp_path, *BASE, "--scm-type", str(path))
    assert "not UTF-8" in line and "0xc4" in line, line


@pytest.mark.parametrize("text, key", [
    ('{"variables": ["A", "B"], "target": "B", "edges": [], "noise_std": 1, "noise_std": 2}',
     "'noise_std'"),
    ('{"variables": ["A", "B"], "target": "B", "edges": [], "noise_std": {"A": 1, "A": 2}}',
     "'A'"),
])
def test_json_duplicate_keys(capsys, tmp_path, text, key):
    line = refused(capsys, tmp_path, *BASE, "--scm-type", scm_file(tmp_path, text))
    assert f"duplicate key {key}" in line, line


def test_json_error_lines_stay_short_for_hostile_values(capsys, tmp_path):
    deep_edge = json.loads("[" * 500 + "]" * 500)
    obj = {**TOY, "edges": [deep_edge, ["A", "B", 1.0]], "target": "Z" * 10_000}
    line = refused(capsys, tmp_path, *BASE, "--scm-type", scm_file(tmp_path, obj))
    assert "target" in line and len(line) < 400, line


def test_variables_beyond_memory(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 10**6)
    obj = {**TOY, "variables": [f"V{i}" for i in range(200)] + ["A", "B", "C"]}
    line = refused(capsys, tmp_path, *BASE, "--scm-type", scm_file(tmp_path, obj))
    assert "203 variables need" in line and "available" in line, line


def test_dict_api_with_non_string_keys_is_one_scm_error():
    from causal_grpo.scm import SCMError
    from causal_grpo.scm_families import scm_from_dict

    with pytest.raises(SCMError, match="unknown key"):
        scm_from_dict({**TOY, 1: "x", "colour": "red"})


# --------------------------------------------------------------------------- 3. names

def test_scm_name_of_300_characters(capsys, tmp_path):
    line = refused(capsys, tmp_path, *BASE, "--scm-type", scm_file(tmp_path, {**TOY, "name": "n" * 300}))
    assert "SCM name" in line and "file names" in line and len(line) < 300, line


@pytest.mark.parametrize("name", ["a/b", "..", "tab\there", ""])
def test_scm_names_unusable_in_file_names(capsys, tmp_path, name):
    line = refused(capsys, tmp_path, *BASE, "--scm-type", scm_file(tmp_path, {**TOY, "name": name}))
    assert "SCM name" in line, line


def test_family_name_with_5000_digits(capsys, tmp_path):
    line = refused(capsys, tmp_path, *BASE, "--scm-type", "er" + "9" * 5000)
    assert "unknown SCM" in line and len(line) < 300, line


def test_name_from_a_long_file_name_is_bounded(tmp_path):
    obj = {k: v for k, v in TOY.items() if k != "name"}
    spec = load_scm_json(scm_file(tmp_path, obj, "s" * 240 + ".json"))
    assert spec.name == "s" * MAX_NAME_CHARS


# --------------------------------------------------------------------------- 4. sizes

@pytest.mark.parametrize("flag", ["--seeds", "--n-interventions", "--n-observational"])
def test_sizes_beyond_memory(capsys, tmp_path, flag):
    line = refused(capsys, tmp_path, *BASE, flag, "1000000000")
    assert line.startswith(f"two_phase_training: error: {flag} 1000000000 is too large"), line
    assert "memory" in line


def test_an_scm_beyond_memory_is_named(capsys, tmp_path):
    """The SCM's size made the sweep too big; the refusal blamed --n-observational."""
    line = refused(capsys, tmp_path, *BASE, "--scm-type", "er100000", "--surrogate", "neural")
    assert "error: --scm-type with 100000 variables is too large" in line, line


def test_memory_bound_follows_available_memory(capsys, tmp_path, monkeypatch):
    # 2 seeds x 6 steps x 1 kB of results fit in 100 kB; 200 seeds (1.2 MB) do not.
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 100_000)
    args = two_phase_training.build_parser().parse_args(BASE)
    two_phase_training.check_memory(args, 1, ["random_active"], 3, 30, args.n_interventions)
    line = refused(capsys, tmp_path, *BASE, "--seeds", "200")
    assert "--seeds 200 is too large" in line, line


def test_memory_estimate_hand_computed():
    from causal_grpo.active_learning import StepRecord

    assert _cli.RECORD_FIELDS == len(StepRecord._fields)
    # rows 14, steps 5: a seed holds 14 * 5 * 5 B of data and 5 * 13 * 4 B of records;
    # 4 copies x 2 seeds, plus 6 cells x 5 steps x 1000 B of results.
    assert _cli.phase2_memory_bytes(5, 2, 10, 4, 6) == 4 * 2 * (350 + 260) + 30_000


def test_available_memory_is_plausible():
    assert 0 < io.available_memory_bytes() <= _physical_memory()


def _physical_memory() -> int:
    import os
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("value", ["1180591620717411303424", "4294967296", "-1"])
def test_base_seed_outside_uint32(capsys, tmp_path, value):
    line = refused(capsys, tmp_path, *BASE, "--base-seed", value)
    assert "--base-seed must be an integer in [0, 4294967295]" in line, line


def test_prng_keeps_only_32_bits_of_a_seed():
    """Why --base-seed stops at 2**32 - 1: a larger seed would repeat a smaller one's cells."""
    np.testing.assert_array_equal(jax.random.PRNGKey(2**32), jax.random.PRNGKey(0))
    args = two_phase_training.build_parser().parse_args(["--base-seed", str(2**32 - 1)])
    assert args.base_seed == 2**32 - 1


@pytest.mark.parametrize("command", ["eval", "scale", "ceiling", "gies"])
def test_every_benchmark_takes_the_sweeps_base_seeds(command):
    """``benchmark eval`` and ``scale`` stopped at 2**31 - 1 where ``two_phase_training`` (whose
    cells they share) takes every 32-bit seed."""
    required = {"eval": ["--grpo-checkpoint", "policies/seed0", "--output-dir", "out"]}
    args = benchmark.build_parser().parse_args(
        [command, "--base-seed", str(2**32 - 1), *required.get(command, [])])
    assert args.base_seed == 2**32 - 1


def test_integer_of_5000_digits(capsys, tmp_path):
    line = refused(capsys, tmp_path, *BASE, "--seeds", "9" * 5000)
    assert "--seeds must be an integer" in line and len(line) < 200, line


@pytest.mark.parametrize("value", ["0", "65", "lots"])
def test_lookahead_draws_outside_1_to_64(capsys, tmp_path, value):
    line = refused(capsys, tmp_path, *BASE, "--lookahead-draws", value)
    assert "--lookahead-draws must be 'auto' or an integer in [1, 64]" in line, line


def test_scms_whose_posteriors_differ(capsys, tmp_path):
    line = refused(capsys, tmp_path, "--scm-type", "dense10,er10", "--n-observational", "40",
                   "--n-interventions", "10", *BASE[:2], *BASE[4:])
    assert "largest parent set (dense10: 9, er10: 4)" in line and "--max-indegree" in line


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "host:abc", "host:-1", "ray://h:1:2",
                                     "http://[bad"])
def test_malformed_ray_addresses(address):
    """urlparse's ValueError (a port out of range or not a number, a bad IPv6 host) was a
    traceback from every job."""
    from causal_grpo.errors import UserError
    from cluster.connect import _check_reachable
    with pytest.raises(UserError, match="must look like host:port or ray://host:port"):
        _check_reachable(address)


@pytest.mark.parametrize("flag, value", [("--address", "127.0.0.1:1"),
                                         ("--gpus-per-worker", "0.5")])
def test_ray_flags_without_ray_workers(capsys, tmp_path, flag, value):
    """With --num-workers 0 every job ran in-process and ignored --address or
    --gpus-per-worker without a word (``main`` has no --gpus-per-worker)."""
    from jobs import main as main_job, train_grpo
    bad = ["--num-workers", "0", flag, value]
    for main, args in ((two_phase_training.main, ["--scm-type", "easy", *bad]),
                       (train_grpo.main, bad),
                       (benchmark.main, ["eval", "--grpo-checkpoint", "policies/seed0", *bad]),
                       (main_job.main, bad if flag == "--address" else None)):
        if args is None:
            continue
        line = refused(capsys, tmp_path, *args, main=main)
        assert f"{flag} needs --num-workers N >= 1" in line, line


def test_no_interventions(capsys, tmp_path):
    line = refused(capsys, tmp_path, "--seeds", "2", "--n-interventions", "0")
    assert "--n-interventions must be an integer in [1, " in line, line


# --------------------------------------------------------------------------- 5. float flags

@pytest.mark.parametrize("args, needle", [
    (["--surrogate", "neural", "--learning-rate", "1e30"], "--learning-rate must be a finite number in (0, 1]"),
    (["--surrogate", "neural", "--learning-rate", "inf"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--num-workers", "1", "--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number"),
    (["--num-workers", "1", "--gpus-per-worker", "-1"], "--gpus-per-worker"),
    (["--num-workers", "1", "--gpus-per-worker", "inf"], "--gpus-per-worker"),
    (["--num-workers", "1", "--gpus-per-worker", "1.5"], "whole number"),
    (["--num-workers", "1", "--gpus-per-worker", "0.00001"], "at least 0.0001"),
])
def test_float_flags_outside_their_range(capsys, tmp_path, args, needle):
    assert needle in refused(capsys, tmp_path, *BASE, *args)


def test_float_flags_accept_their_range():
    p = two_phase_training.build_parser()
    args = p.parse_args(["--learning-rate", "1", "--gpus-per-worker", "0.25"])
    assert (args.learning_rate, args.gpus_per_worker) == (1.0, 0.25)
    assert p.parse_args(["--gpus-per-worker", "2"]).gpus_per_worker == 2.0
    assert _cli.positive_float("--x", allow_zero=True)("0") == 0.0
    with pytest.raises(Exception, match=r"\(0, 1e\+06\]"):
        _cli.positive_float("--x")("1e7")


# --------------------------------------------------------------------------- benchmark flags

@pytest.mark.parametrize("args, needle", [
    (["phase2", "--seeds", "1000000000"], "--seeds 1000000000 is too large"),
    (["phase2", "--n-interventions", "1000000000"], "--n-interventions 1000000000 is too large"),
    (["gies", "--budgets", "0,1000000000"], "--budgets 1000000000 is too large"),
    (["phase2", "--surrogates", "magic"], "unknown surrogate"),
    (["gies", "--base-seed", "1180591620717411303424"], "--base-seed"),
    (["gies", "--degree", "1,2,3"], "expected 2"),
    (["gies", "--degree", "nan,2"], "--degree"),
    (["posterior", "--seconds", "inf"], "--seconds"),
    (["ray", "--workers", "0,-1"], "--workers"),
    (["scale", "--families", "foo"], "--families takes distinct names from er, sf"),
    (["scale", "--families", "er,er"], "--families takes distinct names"),
    (["scale", "--dims", "5,5"], "--dims lists a size twice"),
    (["scale", "--degree", "5"], "expected 2"),
    (["scale", "--degree", "3,2"], "argument --degree: is a range lo,hi with lo <= hi, got '3,2'"),
    (["gies", "--degree", "3,2"], "argument --degree: is a range lo,hi with lo <= hi"),
    (["scale", "--degree=-1,2"], "--degree"),
    (["scale", "--degree", "1e300,1e301"], "--degree"),
    (["phase1", "--workers", "1"], "unrecognized arguments"),
    (["ceiling", "--scms", "easy,easy"], "--scms lists an SCM twice"),
    (["gies", "--d", "5,5"], "--d: lists a value twice"),
    (["gies", "--budgets", "0,0"], "--budgets: lists a value twice"),
    (["posterior", "--d", "3,3"], "--d: lists a value twice"),
    (["ray", "--workers", "0,0"], "--workers: lists a value twice"),
    (["phase2", "--surrogates", "analytic,analytic"], "--surrogates: lists a value twice"),
    (["posterior", "--d", "3", "--batch", "100000000"], "needs about"),
    (["phase2", "--surrogates", "neural", "--neural-seeds", "2147483647"],
     "--neural-seeds 2147483647 is too large"),
    (["phase2", "--scm", "er20000", "--surrogates", "neural", "--neural-seeds", "1"],
     "at d = 20000 would need about"),
    (["phase2", "--scm", "nonsense"], "nonsense"),
    (["ceiling", "--scms", "er100000000", "--seeds", "1"], "would need about"),
    (["ceiling", "--scms", "er10", "--seeds", "1", "--draws", "100000"], "would need about"),
    (["scale", "--dims", "10", "--seeds", "1", "--n-interventions", "2000000000"],
     "--n-interventions"),
    (["gies", "--d", "500", "--seeds", "10000", "--budgets", "0"], "structure posterior"),
    (["eval", "--grpo-checkpoint", "r", "--output-dir", "o", "--gpus-per-worker", "nan"],
     "--gpus-per-worker"),
    (["eval", "--grpo-checkpoint", "r", "--output-dir", "o", "--gpus-per-worker", "-3"],
     "--gpus-per-worker"),
    (["ray", "--seconds", "1e6"], "--seconds"),
    (["phase2", "--workflow-episodes", "1001"], "--workflow-episodes must be an integer in [0, 1000], got 1001"),
    (["phase2", "--grpo-checkpoint", "no/such/run"], "checkpoint not found: no/such/run"),
    (["devices"], "JAX sees no accelerator here"),       # the tests run JAX_PLATFORMS=cpu
    (["devices", "--scms", "er10,er10"], "--scms lists an SCM twice"),
    (["devices", "--methods", "random_active,grpo_active"],
     "devices: grpo_active needs --grpo-checkpoint DIR"),
    (["devices", "--methods", "oracle_active"], "'oracle_active' is not one of"),
    (["devices", "--grpo-checkpoint", "no/such/run"], "checkpoint not found: no/such/run"),
    (["devices", "--grpo-checkpoint", "policies/seed0", "--methods", "random_active"],
     "--grpo-checkpoint is used only by grpo_active and grpo_bootstrap"),
    (["devices", "--scms", "nonsense"], "nonsense"),
    (["devices", "--scms", "er10", "--seeds", "100000000"], "--seeds 100000000 is too large"),
])
def test_benchmark_flags(capsys, tmp_path, args, needle):
    assert needle in refused(capsys, tmp_path, *args, main=benchmark.main, output=False)


def test_benchmark_out_that_cannot_be_written_is_refused_before_the_run(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out, needle in [(blocker / "t.csv", "cannot create output directory"),
                        (tmp_path, "is not a file name"), ("", "is not a file name"),
                        (f"{tmp_path}/new/", "is not a file name"),
                        (tmp_path / ("a" * 250 + ".csv"), "cannot write it")]:
        line = refused(capsys, tmp_path, "scale", "--dims", "100", "--out", str(out),
                       main=benchmark.main, output=False)
        assert needle in line, line
    assert not (tmp_path / "new").exists()


def test_eval_refuses_runs_it_would_count_twice_or_not_use(capsys, tmp_path):
    run = os.path.join(os.path.dirname(__file__), "..", "..", "policies", "seed0")
    out = str(tmp_path / "out")
    for args, needle in [([run, run + "/", "--output-dir", out], "lists a run twice"),
                         ([run, "--protocol-checkpoint", run, "--scms", "easy", "--output-dir",
                           out], "--scms has none"),
                         ([run, "--protocol-checkpoint", run, "--scms", "dense10",
                           "--output-dir", out], "was trained on the mixed family"),
                         ([run, "--output-dir", out, "--out", f"{out}/summary.csv"],
                          "is inside --output-dir"),
                         ([run, "--output-dir", out, "--seeds", "2147483647"],
                          "--seeds 2147483647 is too large")]:
        line = refused(capsys, tmp_path, "eval", "--grpo-checkpoint", *args,
                       main=benchmark.main, output=False)
        assert needle in line, line


def test_a_directory_another_run_writes_into_is_refused(capsys, tmp_path):
    """A job submitted again while the first still ran (two drivers in one directory) deleted
    the first's temporaries older than a minute, whose publish then failed with a traceback."""
    import subprocess
    import sys
    out = tmp_path / "out"
    out.mkdir()
    hold = ("import sys; from causal_grpo import io; io.ensure_writable_dir(sys.argv[1], "
            "exclusive=True); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        for main, args in ((two_phase_training.main, ["--scm-type", "easy", *BASE]),
                           (benchmark.main, ["eval", "--grpo-checkpoint", "policies/seed0",
                                             "--scms", "easy", "--seeds", "2"])):
            with pytest.raises(SystemExit) as ei:
                main([*args, "--output-dir", str(out)])
            err = capsys.readouterr().err.strip().splitlines()
            assert ei.value.code == 2 and len(err) == 1, err
            assert err[0].endswith(f"error: output directory {out} is in use by another run "
                                   "(still running?); wait for it to end or use another "
                                   "directory"), err
    finally:
        holder.stdin.close()
        holder.wait(60)
    with pytest.raises(AssertionError, match="reached the compute"):   # free again
        two_phase_training.main(["--scm-type", "easy", *BASE, "--output-dir", str(out)])


# --------------------------------------------------------------------------- the main job

@pytest.mark.parametrize("occupied", ["a file", "another run"])
def test_main_job_checks_phase_2s_output_before_phase_1(capsys, tmp_path, monkeypatch, occupied):
    from jobs import main as main_job, train_grpo

    def phase1(*args, **kwargs):
        raise AssertionError("Phase 1 started before Phase 2's output directory was checked")

    monkeypatch.setattr(train_grpo, "run", phase1)
    out = tmp_path / "phase2"
    if occupied == "a file":
        out.write_text("x")
    else:
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"settings": {"seeds": 3}}))
        (out / "steps.csv").write_text("scm,method,seed,step\n")     # its results
    line = refused(capsys, tmp_path, "--num-workers", "0", "--seeds", "2", "--phase1-dir",
                   str(tmp_path / "p1"), "--output-dir", str(out), main=main_job.main,
                   output=False)
    assert line.startswith("main: error: ") and str(out) in line, line
    assert ("cannot create output directory" if occupied == "a file"
            else "holds a run with other settings") in line
    assert not (tmp_path / "p1").exists()


@pytest.mark.parametrize("phase1, phase2", [("d", "d"), ("d/p1", "d"), ("d", "d/p2")])
def test_main_job_refuses_overlapping_directories_before_phase_1(capsys, tmp_path, monkeypatch,
                                                                 phase1, phase2):
    """Phase 2 refused the directory holding Phase 1's checkpoints only after the training."""
    from jobs import main as main_job, train_grpo

    def phase1_run(*args, **kwargs):
        raise AssertionError("Phase 1 started")

    monkeypatch.setattr(train_grpo, "run", phase1_run)
    line = refused(capsys, tmp_path, "--num-workers", "0", "--phase1-dir",
                   str(tmp_path / phase1), "--output-dir", str(tmp_path / phase2),
                   main=main_job.main, output=False)
    assert "overlap; give two separate directories" in line, line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("flag", ["--phase1-dir", "--output-dir"])
def test_main_job_names_its_own_empty_directory_flag(capsys, tmp_path, flag):
    from jobs import main as main_job
    dirs = {"--phase1-dir": str(tmp_path / "p1"), "--output-dir": str(tmp_path / "p2"), flag: ""}
    line = refused(capsys, tmp_path, "--num-workers", "0", *[x for kv in dirs.items() for x in kv],
                   main=main_job.main, output=False)
    assert line == f"main: error: {flag} must not be empty or blank", line
    assert not os.listdir(tmp_path)


def _no_phase1(monkeypatch):
    from jobs import train_grpo

    def phase1(*args, **kwargs):
        raise AssertionError("Phase 1 started")

    monkeypatch.setattr(train_grpo, "run", phase1)


@pytest.mark.parametrize("held", ["a file", "another run"])
def test_main_job_names_its_own_flag_for_phase_1s_directory(capsys, tmp_path, monkeypatch, held):
    """Phase 1's refusals came as `train_grpo: ... use a new --output-dir`, the flag of Phase 2's
    directory under `main`, and only when Phase 1 started."""
    import shutil

    from jobs import main as main_job
    _no_phase1(monkeypatch)
    p1 = tmp_path / "p1"
    if held == "a file":
        p1.mkdir()
        (p1 / "notes.txt").write_text("x")
    else:
        shutil.copytree(os.path.join(ROOT, "policies", "dense"), p1)   # another family's run
    line = refused(capsys, tmp_path, "--num-workers", "0", "--phase1-dir", str(p1),
                   main=main_job.main)
    assert line.startswith("main: error: ") and str(p1) in line, line
    assert line.endswith("use another --phase1-dir" if held == "a file" else
                         "use another --phase1-dir (main trains with train_grpo's defaults)"), line


def test_main_job_refuses_phase_1s_worker_count_before_anything_runs(capsys, tmp_path,
                                                                      monkeypatch):
    from jobs import main as main_job
    _no_phase1(monkeypatch)
    line = refused(capsys, tmp_path, "--num-workers", "2000", "--phase1-dir",
                   str(tmp_path / "p1"), main=main_job.main)
    assert "--num-workers must be an integer in [0, 1024]" in line, line
    assert not (tmp_path / "p1").exists()


@pytest.mark.parametrize("phase1", ["to train", "trained"])
def test_main_job_refuses_results_of_another_policy_before_phase_1(capsys, tmp_path, monkeypatch,
                                                                     phase1):
    """Results of another policy in Phase 2's directory were found only once Phase 1 had
    trained a new one (20 minutes and more); a trained one is compared by its content now."""
    import shutil

    from jobs import main as main_job
    _no_phase1(monkeypatch)
    p1, out = tmp_path / "p1", tmp_path / "phase2"
    if phase1 == "trained":
        shutil.copytree(os.path.join(ROOT, "policies", "seed0"), p1)
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"settings": {"grpo_policy": "0" * 64}}))
    (out / "steps.csv").write_text("scm,method,seed,step\n")
    line = refused(capsys, tmp_path, "--num-workers", "0", "--phase1-dir", str(p1),
                   "--output-dir", str(out), main=main_job.main, output=False)
    assert line.startswith("main: error: ") and str(out) in line, line
    assert ("knows only once it is trained" if phase1 == "to train"
            else "grpo_policy") in line, line


def test_a_finished_phase_1_run_is_only_read(tmp_path, monkeypatch, capsys):
    """A finished run on storage the job cannot write (a shared read-only checkpoint) was
    refused as not writable although nothing is written to it."""
    import shutil

    from causal_grpo.errors import UserError
    from jobs import train_grpo
    run_dir = tmp_path / "seed0"
    shutil.copytree(os.path.join(ROOT, "policies", "seed0"), run_dir)

    def read_only(path, exclusive=False):
        raise UserError(f"output directory {path} is not writable: Read-only file system")

    monkeypatch.setattr(io, "ensure_writable_dir", read_only)
    assert train_grpo.main(["--output-dir", str(run_dir), "--num-workers", "0"]) == 0
    assert "training already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit):          # a run still to train needs to write
        train_grpo.main(["--output-dir", str(tmp_path / "new"), "--num-workers", "0"])
    assert "Read-only file system" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["phase2", "--scm", "nonsense"],
                                  ["eval", "--grpo-checkpoint", "no/such/run"]])
def test_a_refused_benchmark_leaves_no_directory_behind(capsys, tmp_path, args):
    """--out's check created its folder (and eval its --output-dir) before a later check
    refused the run: an empty folder was left behind."""
    extra = ["--output-dir", str(tmp_path / "ev" / "out")] if args[0] == "eval" else []
    line = refused(capsys, tmp_path, *args, *extra, "--out", str(tmp_path / "new" / "t.csv"),
                   main=benchmark.main, output=False)
    assert "nonsense" in line or "no/such/run" in line, line
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_running_out_of_memory_mid_run_is_one_line_and_exit_1(capsys):
    """A real XLA allocation failure (what an accelerator smaller than the checks assumed
    raises): one line naming it, exit code 1; any other runtime error stays a traceback."""
    import jax.numpy as jnp

    @_cli.user_errors_exit_2("job")
    def job(n):
        return jnp.zeros((n,), jnp.float32).block_until_ready()

    with pytest.raises(SystemExit) as e:
        job(2**38)
    assert e.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("job: ran out of memory (RESOURCE_EXHAUSTED: Out of memory "), line

    @_cli.user_errors_exit_2("job")
    def bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        bug()


def test_a_jax_platform_that_is_not_installed_is_one_line_and_leaves_nothing(tmp_path):
    """JAX_PLATFORMS naming a backend this machine lacks: JAX raised a bare AssertionError
    (cuda) or a RuntimeError (others) from its first computation, after the output directory
    was made. With JAX_PLATFORMS unset, a backend that fails to start is the run's failure
    (exit 1); asking JAX for a backend by a wrong name is a defect of ours (a traceback)."""
    import importlib.util
    import subprocess
    import sys
    cuda = any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    for platform in ("rocm",) + (() if cuda else ("cuda",)):     # cuda runs on a CUDA host
        out = tmp_path / platform / "out"
        r = subprocess.run([sys.executable, "-m", "jobs.two_phase_training", "--scm-type", "easy",
                            *BASE, "--output-dir", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS=platform))
        err = [line for line in r.stderr.splitlines() if "two_phase_training" in line]
        assert r.returncode == 2 and len(err) == 1, r.stderr
        assert f"JAX cannot start the backend JAX_PLATFORMS='{platform}' names" in err[0]
        assert "Traceback" not in r.stderr and not (tmp_path / platform).exists()
    code = """
import os, jax
from jobs._cli import backend_failure
try:
    jax.devices()
except RuntimeError as e:
    del os.environ["JAX_PLATFORMS"]
    line, code = backend_failure(e)
    print(code, line)
"""
    wrong_name = """
import jax
from jobs._cli import backend_failure
try:
    jax.devices("bogus")
except RuntimeError as e:
    print(backend_failure(e))
"""
    (unset,), (wrong_name,) = (subprocess.run(
        [sys.executable, "-c", c], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS=p)).stdout.strip().splitlines()
        for c, p in ((code, "rocm"), (wrong_name, "cpu")))
    assert unset.startswith("1 JAX cannot start its backend (Unable to initialize backend 'rocm'")
    assert unset.endswith("; check the accelerator and its driver, or compute on the CPU with "
                          "JAX_PLATFORMS=cpu")
    assert wrong_name == "None"
