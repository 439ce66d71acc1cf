"""The sweep keeps a bounded number of compiled programs alive (each large XLA CPU program
holds thousands of memory mappings; a process may have 65,530), and drops the others."""

from __future__ import annotations

import gc
import weakref

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

