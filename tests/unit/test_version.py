"""The code version in every cell cache key: a digest of the library modules a cell runs."""

import glob
import json
import os
import shutil
import subprocess
import sys

from causal_grpo import version

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def copy_sources(dst):
    for path in glob.glob(os.path.join(version.SOURCE_DIR, "*.py")):
        shutil.copy(path, dst)


def test_the_import_closure_on_hand_made_modules(tmp_path):
    files = {
        "root": "import numpy\n\ndef f():\n    from causal_grpo.x import g\n    return g\n",
        "x": "import causal_grpo.y as yy\n",
        "y": "from causal_grpo import z, not_a_module\n",
        "z": "from . import r\n",
        "r": "",
        "w": "from causal_grpo import root\n",           # imports the root; nobody imports w
        "v": "",                                          # imported by nobody
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
    assert version.cell_modules(str(tmp_path), ("root",)) == ["r", "root", "x", "y", "z"]


def test_a_change_to_a_cell_module_changes_the_digest_and_nothing_else_does(tmp_path):
    copy_sources(tmp_path)
    base = version.source_digest(str(tmp_path))
    assert base == version.source_digest(version.SOURCE_DIR)           # contents, not location
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "__pycache__").mkdir()
    assert version.source_digest(str(tmp_path)) == base
    sweep = tmp_path / "sweep.py"
    text = sweep.read_text()
    sweep.write_text(text + "\n")                                      # one byte more
    assert version.source_digest(str(tmp_path)) != base
    sweep.write_text(text)
    assert version.source_digest(str(tmp_path)) == base
    # Tables and statistics of finished cells, and training, are outside the cells' code.
    for outside in ("results.py", "phase1.py", "grpo.py"):
        (tmp_path / outside).write_text((tmp_path / outside).read_text() + "\nX = 1\n")
        assert version.source_digest(str(tmp_path)) == base, outside
    (tmp_path / "new_module.py").write_text("")                        # imported by nothing
    assert version.source_digest(str(tmp_path)) == base
    # ... until a cell module imports it, even inside a function; then its contents count.
    surrogate = tmp_path / "surrogate.py"
    surrogate.write_text(surrogate.read_text() + "\n\ndef _f():\n    import causal_grpo.new_module\n")
    imported = version.source_digest(str(tmp_path))
    assert imported != base
    (tmp_path / "new_module.py").write_text("X = 2\n")
    assert version.source_digest(str(tmp_path)) != imported
    # Moving code between files changes it too (names and lengths are part of the digest).
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n"), b.write_text("")
    moved = version.source_digest(str(tmp_path), ("a", "b"))
    a.write_text(""), b.write_text("x = 1\n")
    assert version.source_digest(str(tmp_path), ("a", "b")) != moved


def test_a_cell_loads_no_library_module_outside_the_digest(tmp_path):
    """Run a real cell (every method's code path is imported by sweep) in a fresh process: each
    library module it has loaded is one the digest covers."""
    probe = (
        "import json, sys\n"
        "from causal_grpo.jaxcache import pin_cpu_numerics\n"
        "pin_cpu_numerics()\n"
        "from causal_grpo.active_learning import EpisodeConfig, Method\n"
        "from causal_grpo.sweep import SweepConfig, plan_batches, run_batch\n"
        "cfg = SweepConfig(scms=('easy',), methods=(Method.UNCERTAINTY,), seeds=1,\n"
        "                  episode=EpisodeConfig(n_observational=5, n_interventions=1), batch_size=1)\n"
        "run_batch(plan_batches(cfg)[0], cfg)\n"
        "print(json.dumps(sorted(m.split('.')[1] for m in sys.modules\n"
        "                        if m.startswith('causal_grpo.'))))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert {"sweep", "surrogate_bayes", "active_learning"} <= loaded
    assert loaded <= set(version.cell_modules()), loaded - set(version.cell_modules())


def test_the_cells_code_version_is_the_digest_and_cached():
    v = version.source_id()
    assert v == version.source_digest()[:16] and version.source_id() is v


def test_the_code_a_worker_shares_with_its_driver_covers_training_and_the_actors(tmp_path):
    """A Ray worker's check against its driver used the cells' digest, which Phase 1's modules
    (rollouts on workers) and the actors' wrappers do not change."""
    lib = tmp_path / "causal_grpo"
    lib.mkdir()
    copy_sources(lib)
    cluster = os.path.join(os.path.dirname(version.SOURCE_DIR), "cluster")
    shutil.copytree(cluster, tmp_path / "cluster", ignore=shutil.ignore_patterns("__pycache__"))
    base = version.library_id(str(lib))
    assert base == version.library_id(version.SOURCE_DIR)              # contents, not location
    for changed in (lib / "phase1.py", lib / "grpo.py", tmp_path / "cluster" / "pool.py"):
        text = changed.read_text()
        changed.write_text(text + "\n")
        version.library_id.cache_clear()
        assert version.library_id(str(lib)) != base, changed.name
        changed.write_text(text)
    version.library_id.cache_clear()
    assert version.library_id(str(lib)) == base
