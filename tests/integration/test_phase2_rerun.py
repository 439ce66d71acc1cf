"""Reruns of the Phase-2 CLI into the same output directory: the same command resumes (also
after SIGINT and kill -9, to a byte-identical steps.csv), other settings are refused before
any compute, a code change recomputes, a corrupt cell is named, moved aside and redone, and a
resumed sweep hands over the SCMs it already holds before computing the rest."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import causal_grpo.sweep as sweep
import cluster.run_sweep as rs
from jobs import two_phase_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = ["--scm-type", "easy", "--methods", "random_active,uncertainty_active", "--seeds", "3",
        "--n-observational", "10", "--n-interventions", "4", "--quiet"]
N_BATCHES = 2


@pytest.fixture
def computed(monkeypatch):
    """Counts the batches the CLI computes (the real run_batch runs)."""
    calls = []

    def counting(batch, *a, **k):
        calls.append(batch)
        return sweep.run_batch(batch, *a, **k)

    monkeypatch.setattr(rs, "run_batch", counting)
    return calls


@pytest.fixture
def done(tmp_path, computed):
    out = tmp_path / "out"
    assert two_phase_training.main(BASE + ["--output-dir", str(out)]) == 0
    assert len(computed) == N_BATCHES
    computed.clear()
    return out


def snapshot(out):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        two_phase_training.main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_same_settings_resume_and_leave_no_stale_plot(done, computed):
    steps = (done / "steps.csv").read_bytes()
    assert (done / "plot_easy.png").exists()
    # Display and worker flags are not settings: this is the same run.
    assert two_phase_training.main(BASE + ["--output-dir", str(done), "--no-plots",
                                           "--num-workers", "0"]) == 0
    assert computed == []
    assert (done / "steps.csv").read_bytes() == steps
    assert not (done / "plot_easy.png").exists()        # not beside results it did not plot


@pytest.mark.parametrize("change, named", [
    (["--seeds", "4"], "seeds"),
    (["--n-interventions", "5"], "episode"),
    (["--methods", "random_active"], "methods"),
    (["--scm-type", "medium"], "scms"),
    (["--base-seed", "7"], "base_seed"),
])
def test_other_settings_are_refused_before_any_compute(done, computed, capsys, change, named):
    before = snapshot(done)
    argv = BASE + change + ["--output-dir", str(done)]
    line = refused(argv, capsys)
    assert "use another --output-dir" in line and named in line, line
    assert computed == []
    assert snapshot(done) == before


def test_a_directory_of_unknown_files_is_refused_and_left_alone(tmp_path, computed, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "plot_easy.png").write_text("someone else's")
    line = refused(BASE + ["--output-dir", str(out)], capsys)
    assert "not empty" in line and "use another --output-dir" in line
    assert computed == [] and os.listdir(out) == ["plot_easy.png"]


def test_a_rerun_removes_tables_a_killed_run_left_half_written(done, computed):
    old, fresh = done / ".tmp-1-steps.csv", done / ".tmp-2-summary.csv"
    for p in (old, fresh):
        p.write_text("half")
    os.utime(old, (0, 0))
    assert two_phase_training.main(BASE + ["--output-dir", str(done)]) == 0
    assert computed == [] and not old.exists() and fresh.exists()   # fresh: maybe a live writer


def test_a_run_stopped_before_its_first_batch_leaves_the_directory_free(tmp_path, monkeypatch,
                                                                        capsys):
    # Refused for memory at its first batch, or interrupted while compiling: the directory
    # holds run.json and an empty cache, and the flag the message suggests must work there.
    from causal_grpo.errors import UserError

    def out_of_memory(batch, *a, **k):
        raise UserError("a batch of 3 seeds would need more memory; lower --batch-size")

    monkeypatch.setattr(rs, "run_batch", out_of_memory)
    out = tmp_path / "out"
    assert "lower --batch-size" in refused(BASE + ["--output-dir", str(out)], capsys)
    assert (out / "run.json").exists()
    monkeypatch.setattr(rs, "run_batch", sweep.run_batch)
    assert two_phase_training.main(BASE + ["--batch-size", "2", "--output-dir", str(out)]) == 0
    # Once a batch is saved, the directory is that run's.
    line = refused(BASE + ["--batch-size", "1", "--output-dir", str(out)], capsys)
    assert "batch_size" in line and "use another --output-dir" in line


def test_a_code_change_recomputes_instead_of_reusing(done, computed, monkeypatch):
    steps = (done / "steps.csv").read_bytes()
    monkeypatch.setattr(sweep, "source_id", lambda: "0123456789abcdef")
    assert two_phase_training.main(BASE + ["--output-dir", str(done)]) == 0
    assert len(computed) == N_BATCHES
    assert len(os.listdir(done / "cells")) == 2                   # one cache per code version
    assert (done / "steps.csv").read_bytes() == steps             # the code did not really change


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_cell_is_named_moved_aside_and_recomputed(done, computed, capsys, damage):
    steps = (done / "steps.csv").read_bytes()
    cell = sorted((done / "cells").rglob("*.npz"))[0]
    data = cell.read_bytes()
    cell.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a cell" * 50)
    capsys.readouterr()
    assert two_phase_training.main(BASE + ["--output-dir", str(done)]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(cell) in err[0] and "corrupt" in err[0], err
    assert len(computed) == 1 and computed[0].method.value in cell.name
    assert cell.with_name(cell.name + ".corrupt").exists()
    assert (done / "steps.csv").read_bytes() == steps


def test_an_interrupt_while_the_tables_are_written_leaves_the_earlier_ones(done, monkeypatch):
    """The tables, pickles and plots are one update: interrupted at the last file, the
    directory holds the earlier run's files only (steps.csv was the first written)."""
    from causal_grpo import io, results
    for name in ("steps.csv", "summary.csv", "comparison.md"):
        (done / name).write_text("earlier run")
    def files():
        return {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}

    before = files()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "plot_curves", interrupted)
    with pytest.raises(SystemExit) as e:
        two_phase_training.main(BASE + ["--output-dir", str(done)])
    assert e.value.code == 130
    assert files() == before
    assert not [p for p in done.iterdir() if p.name.startswith(io.TMP_PREFIX)]


def test_a_cell_the_system_cannot_read_is_one_line_and_kept(done, computed, capsys,
                                                            monkeypatch):
    """Too many open files (or a lost mount, or permissions) says nothing about the cell's
    content: it stops the run with one line instead of discarding a finished cell."""
    import builtins
    cell = sorted((done / "cells").rglob("*.npz"))[0]
    real_open = builtins.open

    def exhausted(path, *a, **k):
        if str(path) == str(cell):
            raise OSError(24, "Too many open files")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", exhausted)
    line = refused(BASE + ["--output-dir", str(done)], capsys)
    assert f"cannot read the stored cell {cell} (Too many open files)" in line, line
    assert cell.exists() and not computed


# 20 batches of 64 vmapped seeds, each a few hundred ms: with the compilation cache warm a
# resumed run computes its batches back to back, and with 10 a clean-clone CI run once saw
# one finish before its signal.
SLOW = ["--scm-type", "er5", "--methods", "random_active", "--seeds", "1280", "--batch-size", "64",
        "--n-observational", "10", "--n-interventions", "40", "--quiet", "--no-plots"]
N_SLOW = 20


def cells_in(out):
    return sorted(p for p in out.rglob("*.npz") if not p.name.startswith("."))


def start_then(out, sig, more_than: int, args=SLOW):
    """Start the CLI, send ``sig`` once more than ``more_than`` cells exist; returns exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "jobs.two_phase_training", *args,
                             "--output-dir", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while len(cells_in(out)) <= more_than:
        assert proc.poll() is None, f"ended before the signal: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    err = proc.communicate(timeout=600)[1]
    assert (out / "steps.csv").exists() is False, "finished before the signal arrived"
    return proc.returncode, err


@pytest.mark.slow
def test_sigint_and_kill_9_resume_to_a_byte_identical_steps_csv(tmp_path):
    out = tmp_path / "run"
    rc, err = start_then(out, signal.SIGINT, 0)
    assert rc == 130 and "rerun to resume" in err, err
    first = cells_in(out)
    assert 1 <= len(first) < N_SLOW
    rc, _ = start_then(out, signal.SIGKILL, len(first))
    assert rc == -signal.SIGKILL
    second = {p: p.stat().st_mtime_ns for p in cells_in(out)}
    assert len(first) < len(second) < N_SLOW
    # Resume in this process, then compute a reference here from scratch.
    assert two_phase_training.main(SLOW + ["--output-dir", str(out)]) == 0
    assert all(p.stat().st_mtime_ns == m for p, m in second.items())   # kept, not redone
    assert len(cells_in(out)) == N_SLOW
    ref = tmp_path / "ref"
    assert two_phase_training.main(SLOW + ["--output-dir", str(ref)]) == 0
    assert (out / "steps.csv").read_bytes() == (ref / "steps.csv").read_bytes()


def interrupt_when_logged(args, out, logged: str):
    """Run the CLI with JAX's compile log and a cold cache, send SIGINT 1 s after the line
    ``logged`` appears; returns (exit code, stderr after it, seconds from signal to exit)."""
    env = dict(os.environ, JAX_LOG_COMPILES="1", CAUSAL_GRPO_JAX_CACHE="off")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.two_phase_training", *args, "--quiet",
                             "--no-plots", "--output-dir", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if logged in line:
                break
        else:
            pytest.fail(f"the batch program was not compiled (rc {proc.wait()})")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        err = proc.communicate(timeout=120)[1]
        return proc.returncode, err, time.time() - sent
    finally:
        if proc.poll() is None:            # never leave a computing child behind
            proc.kill()
            proc.wait()


def test_ctrl_c_while_xla_compiles_exits_130_not_with_a_segfault(tmp_path):
    # Interrupted while XLA compiled the batch program, finalising Python segfaulted after the
    # one-line message (3 of 3 here before the fix). Compiling takes seconds and the compile log
    # says when it starts; a cold cache makes it compile; 300 steps keep the run going.
    rc, err, _ = interrupt_when_logged(
        ["--scm-type", "er12", "--methods", "plugin_active", "--seeds", "2", "--batch-size", "1",
         "--n-interventions", "300"], tmp_path / "run",
        "Finished jaxpr to MLIR module conversion jit(one)")
    assert rc == 130, err[-2000:]
    assert [line for line in err.splitlines() if "two_phase_training" in line] == [
        "two_phase_training: interrupted; finished work is kept, rerun to resume"]


def test_ctrl_c_while_a_batch_computes_stops_the_job_at_once(tmp_path):
    # A compiled batch runs without returning to Python (minutes at d = 100), and Ctrl-C
    # waited for its end (here the batch outlasts the 5 s allowed many times over).
    out = tmp_path / "run"
    rc, err, took = interrupt_when_logged(
        ["--scm-type", "er14", "--methods", "plugin_active", "--seeds", "1",
         "--n-interventions", "100"], out, "Finished XLA compilation of jit(one)")
    assert rc == 130 and took < 5 and cells_in(out) == [], err[-2000:]


SWALLOWED = """
import os, signal, sys, time
from jobs import _cli

class Finaliser:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):      # the interrupt is raised here, inside the finaliser
            pass

@_cli.user_errors_exit_2("job")
def main():
    Finaliser()
    t0 = time.time()
    while time.time() - t0 < 20:
        time.sleep(0.01)
    return 0

_cli.run_script(main)
"""


def test_ctrl_c_inside_a_finaliser_still_stops_the_job(tmp_path):
    # JAX frees device buffers from a garbage-collector callback; Ctrl-C landing there was
    # printed as "Exception ignored" and dropped, and the run went on.
    script = tmp_path / "job.py"
    script.write_text(SWALLOWED)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 130 and time.time() - t0 < 15, proc.stderr
    assert proc.stderr == "job: interrupted; finished work is kept, rerun to resume\n"


@pytest.mark.parametrize("content", [b"{", b"[1, 2]", b'{"settings": [1]}', b"\xff\xfe"])
def test_an_unreadable_run_json_is_refused_in_one_line(done, computed, capsys, content):
    (done / "run.json").write_bytes(content)
    line = refused(BASE + ["--output-dir", str(done)], capsys)
    assert "run.json is unreadable" in line and computed == []


def test_a_resumed_sweep_shows_the_scms_already_done_before_computing(tmp_path, computed):
    from causal_grpo.active_learning import EpisodeConfig, Method
    from causal_grpo.scm_families import resolve_scm

    cfg = sweep.SweepConfig(("chain3", "easy"), (Method.RANDOM,), 2, EpisodeConfig(5, 2),
                            batch_size=1)
    sources = {n: resolve_scm(n) for n in cfg.scms}
    store = sweep.CellStore(str(tmp_path / "cells"), sweep.sweep_digest(cfg, None, sources, "easy"))
    easy_last = store.path(sweep.Batch("easy", Method.RANDOM, (1,)))
    calls = []

    def on_scm_done(scm, batches):
        calls.append((scm, sorted(b.seeds for b in batches), len(computed)))

    rs.run_sweep(cfg, sources, None, str(tmp_path), progress=False, on_scm_done=on_scm_done)
    # chain3 once its two batches are in; easy, the last, is the caller's to show.
    assert calls == [("chain3", [(0,), (1,)], 2)] and len(computed) == 4
    os.unlink(easy_last)
    calls.clear()
    computed.clear()
    rs.run_sweep(cfg, sources, None, str(tmp_path), progress=False, on_scm_done=on_scm_done)
    assert calls == [("chain3", [(0,), (1,)], 0)] and len(computed) == 1
    calls.clear()
    rs.run_sweep(cfg, sources, None, str(tmp_path), progress=False, on_scm_done=on_scm_done)
    assert calls == []                     # nothing to compute: the caller shows everything


def test_the_policy_is_known_by_its_content_not_its_path(tmp_path, computed, capsys):
    """The run was keyed by the checkpoint's absolute path: the same policy from another
    directory (every `ray job submit` uploads to a new one) was refused as other settings,
    and another policy put at the same path replaced the results unnoticed."""
    import shutil
    policies = os.path.join(ROOT, "policies")
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(os.path.join(policies, "seed0", "final"), here)
    shutil.copytree(os.path.join(policies, "seed0", "final"), there)
    argv = ["--scm-type", "easy", "--methods", "grpo_active", "--seeds", "1",
            "--n-observational", "5", "--n-interventions", "1", "--quiet", "--no-plots",
            "--output-dir", str(tmp_path / "out")]
    assert two_phase_training.main(argv + ["--grpo-checkpoint", str(here)]) == 0
    assert len(computed) == 1
    assert two_phase_training.main(argv + ["--grpo-checkpoint", str(there)]) == 0
    assert len(computed) == 1                                  # resumed: nothing recomputed
    shutil.rmtree(here)
    shutil.copytree(os.path.join(policies, "seed1", "final"), here)
    line = refused(argv + ["--grpo-checkpoint", str(here)], capsys)
    assert "holds a run with other settings (grpo_policy differ)" in line
    assert len(computed) == 1


def test_adding_an_scm_keeps_the_other_scms_cells(tmp_path, computed):
    """The cells' key covered every SCM of the sweep: one SCM more (an evaluation's --scms
    grown by one) recomputed all the others."""
    from causal_grpo.active_learning import EpisodeConfig, Method
    from causal_grpo.scm_families import resolve_scm

    def run(*scms):
        cfg = sweep.SweepConfig(scms, (Method.RANDOM,), 2, EpisodeConfig(5, 2), batch_size=2)
        return rs.run_sweep(cfg, {n: resolve_scm(n) for n in scms}, None, str(tmp_path),
                            progress=False)

    first = run("chain3")
    assert [b.scm for b in computed] == ["chain3"]
    both = run("chain3", "easy")
    assert [b.scm for b in computed] == ["chain3", "easy"]    # only easy was computed
    (b,) = first
    for k, v in first[b].items():
        np.testing.assert_array_equal(both[b][k], v)


def test_a_sweep_computes_under_the_callers_jax_numerics(tmp_path, monkeypatch):
    """JAX's context managers are thread-local: a sweep called inside one ran its batches (on a
    thread of their own) under the defaults, stored under a key that recorded the setting."""
    import jax

    from causal_grpo.active_learning import EpisodeConfig, Method
    from causal_grpo.jaxcache import numerics
    from causal_grpo.scm_families import resolve_scm

    seen = []

    def recording(batch, *a, **k):
        seen.append(numerics()["default_matmul_precision"])
        return sweep.run_batch(batch, *a, **k)

    monkeypatch.setattr(rs, "run_batch", recording)
    cfg = sweep.SweepConfig(("chain3",), (Method.RANDOM,), 1, EpisodeConfig(5, 1), batch_size=1)
    with jax.default_matmul_precision("highest"):
        rs.run_sweep(cfg, {"chain3": resolve_scm("chain3")}, None, str(tmp_path),
                     progress=False)
    assert seen == ["highest"]
