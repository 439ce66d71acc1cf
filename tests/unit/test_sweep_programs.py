"""The sweep keeps a bounded number of compiled programs alive (each large XLA CPU program
holds thousands of memory mappings; a process may have 65,530), and drops the others."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from causal_grpo import sweep
from causal_grpo.active_learning import EpisodeConfig, Method
from causal_grpo.scm_families import resolve_scm

EPISODE = EpisodeConfig(n_observational=5, n_interventions=3)


def test_least_recently_used_programs_are_dropped_and_freed():
    sweep._RUNNERS.clear()
    dims = range(3, 3 + sweep.MAX_PROGRAMS)
    refs = {d: weakref.ref(sweep._runner(EPISODE, Method.RANDOM, d, None)) for d in dims}
    assert sweep._runner(EPISODE, Method.RANDOM, 3, None) is refs[3]()   # reused, now newest
    sweep._runner(EPISODE, Method.RANDOM, 3 + sweep.MAX_PROGRAMS, None)   # evicts d = 4
    gc.collect()
    assert len(sweep._RUNNERS) == sweep.MAX_PROGRAMS
    assert refs[4]() is None, "a dropped program is still referenced"
    assert all(refs[d]() is not None for d in dims if d != 4)


def test_drawing_mixed_family_cells_compiles_once():
    """A cell's SCM is drawn outside jit; for ``mixed<d>`` the graph-kind switch compiled anew
    at every draw, each program keeping memory mappings until the process ran out."""
    import os

    from causal_grpo.sweep import cell_scm_and_key

    def maps() -> int:
        with open(f"/proc/{os.getpid()}/maps") as f:
            return sum(1 for _ in f)

    src = resolve_scm("mixed9")
    cell_scm_and_key(src, 0, 0)
    before = maps()
    for seed in range(1, 21):
        cell_scm_and_key(src, 0, seed)
    assert maps() - before < 200, f"{maps() - before} new memory mappings for 20 draws"


def test_a_batch_whose_buffers_exceed_memory_is_refused_before_it_runs(monkeypatch):
    """XLA's buffer assignment of the compiled batch is compared with the available memory
    before anything runs; then the same program runs when memory suffices."""
    import numpy as np
    import pytest

    from causal_grpo.errors import UserError

    sweep._RUNNERS.clear()
    cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=2, batch_size=2,
                            episode=EPISODE)
    batch = sweep.plan_batches(cfg)[0]
    program = sweep._runner(EPISODE, Method.RANDOM, 4, None)
    monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: 1000)
    with pytest.raises(UserError, match=r"a batch of 2 seeds of random_active on er4 would "
                                        r"need about .* and this machine has 1.0 kB available"):
        sweep.run_batch(batch, cfg)
    assert program.executables == {}      # refused programs are not kept, nor run
    monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: 10 ** 12)
    out = sweep.run_batch(batch, cfg)
    assert np.all(np.isfinite(out["f1"])) and len(program.executables) == 1



def _program_need(monkeypatch) -> tuple[sweep.Batch, sweep.SweepConfig, int]:
    sweep._RUNNERS.clear()
    cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=2, batch_size=2,
                            episode=EPISODE)
    batch = sweep.plan_batches(cfg)[0]
    program = sweep._runner(EPISODE, Method.RANDOM, 4, None)
    monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: 10 ** 12)
    sweep.run_batch(batch, cfg)
    (need,) = program.needs.values()
    sweep._RUNNERS.clear()
    return batch, cfg, need


def test_a_running_siblings_memory_counts_towards_the_share_not_against_it(monkeypatch,
                                                                          tmp_path):
    """Two workers share a machine with memory for two programs. While the first runs its
    program, MemAvailable lacks what it took: the second, checking its half, adds that back
    from the first's note (a real process holding real memory), and is refused once that
    process is gone (then the memory would be free: MemAvailable, mocked here, would show it)."""
    import subprocess
    import sys

    import pytest

    from causal_grpo.errors import UserError

    batch, cfg, need = _program_need(monkeypatch)
    sibling = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith("VmRSS:"))
start = rss()
held = bytearray(b"x") * {need + 2 ** 20}     # written, so resident
print(start, flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        start = int(sibling.stdout.readline())
        registry = tmp_path / "registry"
        registry.mkdir()
        (registry / str(sibling.pid)).write_text(f"{need} {start}")
        (registry / "stray").write_text("not a worker")
        assert sweep.held_by_others(str(registry)) == need
        monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: int(1.5 * need))
        out = sweep.run_batch(batch, cfg, memory_share=2, memory_registry=str(registry))
        assert np.all(np.isfinite(out["f1"]))
        sweep._RUNNERS.clear()
        with pytest.raises(UserError, match="for each of 2 workers"):      # no note: refused
            sweep.run_batch(batch, cfg, memory_share=2)
    finally:
        sibling.kill()
        sibling.wait()
    sweep._RUNNERS.clear()
    assert sweep.held_by_others(str(registry)) == 0                        # gone
    assert not (registry / str(sibling.pid)).exists()                      # its note too
    with pytest.raises(UserError, match="for each of 2 workers"):
        sweep.run_batch(batch, cfg, memory_share=2, memory_registry=str(registry))
    # Refused because it does not fit in what is free now: that is the figure named.
    sweep._RUNNERS.clear()
    monkeypatch.setattr(sweep, "held_by_others", lambda reg: 10 * need)
    monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: need // 2)
    with pytest.raises(UserError) as e:
        sweep.run_batch(batch, cfg, memory_share=2, memory_registry=str(registry))
    assert "for each of" not in str(e.value)
    assert f"has {sweep.io.format_bytes(need // 2)} available" in str(e.value)


def test_a_program_is_noted_while_it_runs_and_only_then(monkeypatch, tmp_path):
    """The note names this process, holds the program's need and the resident memory before
    it, and is gone when the batch returns; an unwritable registry costs the note only."""
    import os

    batch, cfg, need = _program_need(monkeypatch)
    registry = tmp_path / "registry"
    seen = []
    real = sweep.running_program

    def spy(reg, n):
        cm = real(reg, n)

        class Spy:
            def __enter__(self):
                cm.__enter__()
                if reg == str(registry):
                    seen.append({p.name: p.read_text() for p in registry.iterdir()})

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return Spy()

    monkeypatch.setattr(sweep, "running_program", spy)
    sweep.run_batch(batch, cfg, memory_share=2, memory_registry=str(registry))
    (note,) = seen
    (text,) = note.values()
    assert list(note) == [str(os.getpid())]
    assert int(text.split()[0]) == need and 0 < int(text.split()[1]) <= sweep.io.resident_bytes(
        os.getpid())
    assert not registry.exists()              # the last note out removes the directory
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    out = sweep.run_batch(batch, cfg, memory_share=2, memory_registry=str(blocked / "reg"))
    assert np.all(np.isfinite(out["f1"]))


def test_cells_under_other_numerics_are_not_reused(monkeypatch):
    """JAX's PRNG implementation or precision changes a cell's numbers: the cache key has it."""
    cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=2, episode=EPISODE)
    sources = {"er4": resolve_scm("er4")}
    before = sweep.sweep_digest(cfg, None, sources, "er4")
    assert sweep.sweep_digest(cfg, None, sources, "er4") == before
    now = sweep.numerics()
    monkeypatch.setattr(sweep, "numerics", lambda: {**now, "default_prng_impl": "rbg"})
    assert sweep.sweep_digest(cfg, None, sources, "er4") != before


def test_cells_are_keyed_by_the_code_not_by_the_packages_metadata():
    """The key held ``<package version>+<digest>``: the same tree keyed its cells apart where
    the package was not installed (``0+uninstalled``: a node, a job's upload) and after a
    version bump, recomputing every cell. A process without the package's metadata keys them
    as this one does."""
    import json
    import subprocess
    import sys
    probe = (
        "import importlib.metadata as md, json\n"
        "def missing(name): raise md.PackageNotFoundError(name)\n"
        "md.version = missing\n"
        "from causal_grpo import sweep\n"
        "from causal_grpo.active_learning import EpisodeConfig, Method\n"
        "from causal_grpo.scm_families import resolve_scm\n"
        "cfg = sweep.SweepConfig(scms=('er4',), methods=(Method.RANDOM,), seeds=2,\n"
        "                        episode=EpisodeConfig(n_observational=5, n_interventions=2))\n"
        "print(json.dumps(sweep.sweep_digest(cfg, None, {'er4': resolve_scm('er4')}, 'er4')))\n")
    cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=2,
                            episode=EpisodeConfig(n_observational=5, n_interventions=2))
    here = sweep.sweep_digest(cfg, None, {"er4": resolve_scm("er4")}, "er4")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == here


def test_cells_computed_on_a_gpu_are_not_reused_on_a_cpu():
    """GPU and CPU kernels differ in their last bits: a sweep resumed with or without
    --gpus-per-worker keys its cells apart; CPU keys are the ones CPU runs always had."""
    from cluster.run_sweep import cell_device
    cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=2, episode=EPISODE)
    sources = {"er4": resolve_scm("er4")}
    assert [cell_device(*a) for a in ((2, 0.0), (2, 0.25), (0, 0.0))] == ["cpu", "gpu", "cpu"]
    cpu = sweep.sweep_digest(cfg, None, sources, "er4")
    assert sweep.sweep_digest(cfg, None, sources, "er4", cell_device(2, 0.0)) == cpu
    assert sweep.sweep_digest(cfg, None, sources, "er4", cell_device(2, 0.5)) != cpu


def test_cells_under_another_jax_release_or_xla_flags_are_not_reused(monkeypatch):
    """A jax patch release or a user's XLA flag (forwarded to CPU workers) can move a cell's
    last bits: either keys the cells apart; spacing does not. The flags are those of the
    processes that compute the cells."""
    cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=2, episode=EPISODE)
    sources = {"er4": resolve_scm("er4")}
    monkeypatch.setenv("XLA_FLAGS", "--xla_a=1 --xla_b=2")
    before = sweep.sweep_digest(cfg, None, sources, "er4")
    assert sweep.sweep_digest(cfg, None, sources, "er4", "cpu", " --xla_a=1  --xla_b=2") == before
    assert sweep.sweep_digest(cfg, None, sources, "er4", "cpu", "--xla_a=1") != before
    monkeypatch.setenv("XLA_FLAGS", "--xla_a=1  --xla_b=2 ")
    assert sweep.sweep_digest(cfg, None, sources, "er4") == before
    monkeypatch.setenv("XLA_FLAGS", "--xla_a=1 --xla_b=2 --xla_cpu_enable_fast_math=true")
    assert sweep.sweep_digest(cfg, None, sources, "er4") != before
    monkeypatch.setenv("XLA_FLAGS", "--xla_a=1 --xla_b=2")
    monkeypatch.setattr(sweep.jax, "__version__", sweep.jax.__version__ + ".post1")
    assert sweep.sweep_digest(cfg, None, sources, "er4") != before


def test_a_cells_numbers_depend_on_its_seed_not_its_place_in_a_batch():
    """Seeds 2 and 3 as a batch of their own, and seed 2 padded to it, are the cells seeds 2
    and 3 have in a batch of 0..3 (to the batch size's last bits): a batch keyed by position
    would repeat seeds 0 and 1 and inflate every paired test's n."""
    def cells(seeds, batch_size):
        cfg = sweep.SweepConfig(scms=("er4",), methods=(Method.RANDOM,), seeds=4,
                                episode=EPISODE, base_seed=11, batch_size=batch_size)
        return sweep.run_batch(sweep.Batch("er4", Method.RANDOM, seeds), cfg)

    whole, pair, single = cells((0, 1, 2, 3), 4), cells((2, 3), 2), cells((2,), 2)
    assert pair["seed"].tolist() == [2, 3] and single["seed"].tolist() == [2]
    for got, rows in ((pair, [2, 3]), (single, [2])):
        np.testing.assert_array_equal(got["true_adj"], whole["true_adj"][rows])
        np.testing.assert_allclose(got["final_probs"], whole["final_probs"][rows], atol=1e-4)
        np.testing.assert_allclose(got["f1"], whole["f1"][rows], atol=1e-4)
    assert not np.array_equal(whole["true_adj"][0], whole["true_adj"][2]) or not np.allclose(
        whole["final_probs"][0], whole["final_probs"][2])


class _Card:
    """An accelerator's face to the check (none here): its kind and its allocator's figures,
    as ``Device.memory_stats`` gives them on a GPU."""

    platform, device_kind = "gpu", "NVIDIA H200"

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_an_accelerators_program_is_checked_against_its_allocator_not_the_host(monkeypatch):
    """On a GPU the buffers live in the card's memory, limited per process (workers sharing a
    card each get a fraction): a program beyond the limit less what the process holds is
    refused in one line naming both, whatever the host has; one within it passes, as does
    any program on a device that gives no limit. None of them counts towards host memory."""
    import jax
    import jax.numpy as jnp
    import pytest

    from causal_grpo.errors import UserError

    exe = jax.jit(lambda x: jnp.outer(x, x)).lower(jnp.ones(1000)).compile()
    m = exe.memory_analysis()
    need = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    assert need >= 4 * 1000 ** 2                                 # its (1000, 1000) output
    monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: 1000)   # ignored on a card
    held = 10 ** 6
    tight = _Card({"bytes_limit": need + held - 1, "bytes_in_use": held})
    with pytest.raises(UserError) as e:
        sweep.check_program_memory(exe, "a batch", device=tight)
    assert str(e.value).count("\n") == 0
    assert (f"a batch would need about {sweep.io.format_bytes(need)} of NVIDIA H200 memory and "
            f"this process has {sweep.io.format_bytes(need - 1)} of it; lower --batch-size (a "
            "batch size of its own needs an output directory of its own), or give the process "
            "more of the card (Ray GPU workers: --gpus-per-worker up to 1; in-process: "
            "XLA_CLIENT_MEM_FRACTION)") in str(e.value)
    roomy = _Card({"bytes_limit": need + held, "bytes_in_use": held})
    assert sweep.check_program_memory(exe, "a batch", share=2, device=roomy) == 0
    assert sweep.check_program_memory(exe, "a batch", device=_Card(None)) == 0
    with pytest.raises(UserError, match="this machine has 1.0 kB available"):    # the host's
        sweep.check_program_memory(exe, "a batch", device=jax.devices("cpu")[0])


def test_the_checked_device_is_the_one_the_program_runs_on(monkeypatch):
    """Without a device named: JAX's default device, or the one ``jax.default_device`` sets
    (a device or a platform name), as the sweep compiles for it."""
    import contextlib

    import jax
    import jax.numpy as jnp
    import pytest

    from causal_grpo.errors import UserError

    exe = jax.jit(lambda x: jnp.outer(x, x)).lower(jnp.ones(1000)).compile()
    monkeypatch.setattr(sweep.io, "available_memory_bytes", lambda: 1000)
    cpu = jax.devices("cpu")[0]
    for chosen in (contextlib.nullcontext(), jax.default_device("cpu"), jax.default_device(cpu)):
        with chosen, pytest.raises(UserError, match="this machine has 1.0 kB available"):
            sweep.check_program_memory(exe, "a batch")
    card = _Card({"bytes_limit": 1000, "bytes_in_use": 0})
    monkeypatch.setattr(jax, "devices", lambda *a: [card])       # JAX's default is a card
    with pytest.raises(UserError, match="of NVIDIA H200 memory and this process has 1.0 kB"):
        sweep.check_program_memory(exe, "a batch")
