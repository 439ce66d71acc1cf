"""The persistent compilation cache: where it lives, and a second process loading from it."""

import json
import os
import subprocess
import sys
import time
import zlib

import pytest

from causal_grpo import jaxcache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A small program (well under JAX's default 1 s threshold) and a count of cache events.
PROBE = """
import json, jax, jax.numpy as jnp
from causal_grpo.jaxcache import enable_compilation_cache
jnp.zeros(2).block_until_ready()      # something compiled before the cache is enabled
events = {}
jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
path = enable_compilation_cache()
f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(axis=0) * jnp.float32(3.5))
f(jnp.ones((8, 4)), jnp.ones((4, 4))).block_until_ready()
print(json.dumps({"dir": path, "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def _probe(env, stderr=None):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if stderr is not None:
        stderr.append(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache"
    # Without the JAX_* settings an in-process job left in os.environ: JAX reads them at import,
    # and its cache, once used, keeps the directory it started with.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env |= dict(CAUSAL_GRPO_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    first = _probe(env)
    assert first["dir"] == str(cache) and first["hits"] == 0 and first["misses"] >= 1
    entries = set(os.listdir(cache))
    assert any(name.startswith("jit__lambda") for name in entries)
    second = _probe(env)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert set(os.listdir(cache)) == entries
    off = _probe(dict(env, CAUSAL_GRPO_JAX_CACHE="off"))
    assert off == {"dir": None, "hits": 0, "misses": 0}


def test_an_entry_cut_short_by_a_killed_writer_is_compiled_again_once(tmp_path):
    """JAX writes an entry in place and never replaces one that exists: an entry cut short by a
    process killed mid-write warned and was compiled again in every later process."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env |= dict(CAUSAL_GRPO_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    _probe(env)
    (name,) = [n for n in os.listdir(cache) if n.startswith("jit__lambda")]
    entry = cache / name
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 2])
    # The check leaves an entry changed in the last minute alone (it may be a live writer's):
    # here the cut is as old as the check needs.
    probe = PROBE.replace("path = enable_compilation_cache()",
                          "import causal_grpo.jaxcache as c\nc._WRITE_GRACE_S = 0.0\n"
                          "path = enable_compilation_cache()")
    stderr = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        stderr.append(r.stderr)
    assert "Error reading persistent compilation cache" not in "".join(stderr), stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["hits"] >= 1 and out["misses"] == 0
    assert len(entry.read_bytes()) > len(whole) // 2 and jaxcache._is_cut(str(entry)) is False


def test_only_cut_entries_changed_since_the_last_check_are_removed(tmp_path, monkeypatch):
    full = zlib.compress(os.urandom(4000) * 20)
    files = {"jit_a-1-cache": full, "jit_b-2-cache": full[: len(full) // 2],
             "jit_c-3-cache": b"", "jit_d-4-cache": full[:-1], "jit_e-5-cache": full + b"x",
             "jit_f-6-cache": b"another format", "jit_g-7-atime": b"", "jit_h-8-cache": b"\x78"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "jit_i-9-cache").mkdir()
    os.mkfifo(tmp_path / "jit_j-10-cache")     # reading it would block
    # A copy keeps an entry's modification time: the change time decides.
    os.utime(tmp_path / "jit_b-2-cache", (0, 0))
    cut = {"jit_b-2-cache", "jit_c-3-cache", "jit_d-4-cache", "jit_h-8-cache"}
    # Changed within the last minute (at default settings): perhaps still being written.
    assert jaxcache.remove_cut_entries(str(tmp_path)) == []
    assert cut <= set(os.listdir(tmp_path))
    assert sorted(jaxcache.remove_cut_entries(str(tmp_path), grace_s=0)) == sorted(cut)
    assert sorted(os.listdir(tmp_path)) == sorted(set(files) - cut | {
        ".checked", "jit_i-9-cache", "jit_j-10-cache"})
    # What was checked is not read again; a new entry is. One that could not be judged (a zstd
    # stream without a zstd module, a read error) is judged by a later check.
    judged = []
    real = jaxcache._is_cut

    def spy(path):
        judged.append(os.path.basename(path))
        return None if len(judged) == 1 else real(path)

    monkeypatch.setattr(jaxcache, "_is_cut", spy)
    (tmp_path / "jit_k-11-cache").write_bytes(b"")
    assert jaxcache.remove_cut_entries(str(tmp_path), grace_s=0) == []
    assert jaxcache.remove_cut_entries(str(tmp_path), grace_s=0) == ["jit_k-11-cache"]
    assert judged == ["jit_k-11-cache"] * 2
    assert jaxcache.remove_cut_entries(str(tmp_path), grace_s=0) == []
    assert judged == ["jit_k-11-cache"] * 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".checked-")]


class _ZstdOverZlib:
    """Python 3.14's zstd decompressor, over zlib: an entry is zstd's magic then a zlib stream.
    Like zstd's, it refuses input after the end of its frame."""

    def __init__(self):
        self._zlib, self._magic, self.eof = zlib.decompressobj(), 4, False

    def decompress(self, data):
        if self.eof:
            raise EOFError("Already at the end of a Zstandard frame")
        skip, self._magic = min(self._magic, len(data)), self._magic - min(self._magic, len(data))
        try:
            out = self._zlib.decompress(data[skip:])
        except zlib.error as e:
            raise ValueError(str(e)) from e
        self.eof = self._zlib.eof
        return out


def test_cut_entries_in_any_format_jax_writes_and_what_a_check_leaves(tmp_path, monkeypatch):
    big = zlib.compress(os.urandom(3 * jaxcache._CHUNK))       # a stream over several reads
    zstd_like = jaxcache._ZSTD_MAGIC + big
    monkeypatch.setattr(jaxcache, "_zstd_decompressor", lambda: (_ZstdOverZlib(), ValueError))
    cases = {"whole": (zstd_like, False), "cut": (zstd_like[:-10], True),
             # The bytes after a complete stream are JAX's to judge: read no further.
             "then more": (zstd_like + b"x" * 2 * jaxcache._CHUNK, False),
             "hole": (bytes(4) + big, True), "zlib cut": (big[:-1], True)}
    for name, (data, cut) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert jaxcache._is_cut(str(tmp_path / name)) is cut, name
    # Without a zstd module its streams cannot be judged: a later check does.
    monkeypatch.setattr(jaxcache, "_zstd_decompressor", lambda: None)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "jit_a-1-cache").write_bytes(zstd_like[:-10])
    for leftover in (".checked-killed", ".probe-killed"):  # of a process killed mid-check
        (cache / leftover).write_bytes(b"")
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0) == []
    assert sorted(os.listdir(cache)) == [".checked", "jit_a-1-cache"]
    monkeypatch.setattr(jaxcache, "_zstd_decompressor", lambda: (_ZstdOverZlib(), ValueError))
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0) == ["jit_a-1-cache"]
    # A read error: the same.
    (cache / "jit_b-2-cache").write_bytes(b"")
    real = jaxcache._is_cut

    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(jaxcache, "_is_cut", unreadable)
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0) == []
    monkeypatch.setattr(jaxcache, "_is_cut", real)
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0) == ["jit_b-2-cache"]
    # A mark from the future (a cache copied from a machine whose clock ran ahead) is ignored.
    os.utime(cache / jaxcache._CHECKED, (2**33, 2**33))
    (cache / "jit_c-3-cache").write_bytes(b"")
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0) == ["jit_c-3-cache"]
    # So is a mark copied after the entries (cp without -p dates it at the copy).
    (cache / "jit_e-5-cache").write_bytes(b"")
    (cache / jaxcache._CHECKED).unlink()
    (cache / jaxcache._CHECKED).write_bytes(b"")
    time.sleep(0.6)
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0.5) == ["jit_e-5-cache"]
    # A fresh entry written while the cut one was judged (another check removed that one) stays.
    (cache / "jit_d-4-cache").write_bytes(b"")

    def replaced_meanwhile(path):
        (cache / "fresh").write_bytes(big)
        os.replace(cache / "fresh", path)
        return True

    monkeypatch.setattr(jaxcache, "_is_cut", replaced_meanwhile)
    assert jaxcache.remove_cut_entries(str(cache), grace_s=0) == []
    assert (cache / "jit_d-4-cache").read_bytes() == big


def test_the_cache_directory_is_per_user_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv(jaxcache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jaxcache.cache_dir() == str(tmp_path / "xdg" / "causal-grpo" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert jaxcache.cache_dir() == str(tmp_path / "home" / ".cache" / "causal-grpo" / "jax")
    for off in ("off", "", "  "):
        monkeypatch.setenv(jaxcache.ENV_VAR, off)
        assert jaxcache.cache_dir() is None and jaxcache.enable_compilation_cache() is None
    monkeypatch.setenv(jaxcache.ENV_VAR, str(tmp_path / "mine"))
    assert jaxcache.cache_dir() == str(tmp_path / "mine")


def test_the_cache_directory_is_never_relative_and_is_refused_where_unwritable(
        monkeypatch, tmp_path, capsys):
    """Without HOME and a passwd entry (a container's arbitrary uid) the cache was created
    under ./~ of the working directory, and a relative XDG_CACHE_HOME was taken as given (each
    process's working directory its own cache). A directory that exists but cannot be written
    gave a warning at every compilation; now one line, once."""
    import tempfile
    monkeypatch.delenv(jaxcache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert jaxcache.cache_dir() == str(tmp_path / "home" / ".cache" / "causal-grpo" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)     # what it returns then
    assert jaxcache.cache_dir() is None and jaxcache.enable_compilation_cache() is None
    monkeypatch.undo()
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    monkeypatch.setenv(jaxcache.ENV_VAR, str(locked))

    def refused(*args, **kwargs):       # as the OS answers a user other than root here
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    capsys.readouterr()
    assert jaxcache.enable_compilation_cache() is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: JAX compilation cache disabled: cannot "
                                               f"write to {locked} (Permission denied)")


def test_pin_cpu_numerics_adds_the_workers_flag_once_and_keeps_the_users():
    env = {}
    jaxcache.pin_cpu_numerics(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    jaxcache.pin_cpu_numerics(env)
    jaxcache.pin_cpu_numerics(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                        "--xla_cpu_multi_thread_eigen=false"]
    env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}     # a user's explicit choice
    jaxcache.pin_cpu_numerics(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"


def test_a_cli_computes_with_the_cpu_numerics_of_a_ray_worker(monkeypatch):
    # Measured: with multi-threaded Eigen in the driver, 2 of 600 cells of a frozen-evaluation
    # slice (medium, er10) differed between an in-process run and Ray workers; with the workers'
    # flag in both, none did. A CLI therefore sets it before its first computation.
    from cluster.connect import worker_env
    from jobs._cli import user_errors_exit_2

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    seen = user_errors_exit_2("probe")(lambda: os.environ["XLA_FLAGS"])()
    assert seen.split() == worker_env(0)["XLA_FLAGS"].split()
    # Whatever else the driver's XLA flags say reaches its CPU workers too (they may change the
    # compiled code); a GPU worker keeps its own.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=false")
    seen = user_errors_exit_2("probe")(lambda: os.environ["XLA_FLAGS"])()
    assert seen.split() == worker_env(0)["XLA_FLAGS"].split() == [
        "--xla_cpu_use_thunk_runtime=false", "--xla_cpu_multi_thread_eigen=false"]
    assert "XLA_FLAGS" not in worker_env(0.5)
    # JAX settings that change results reach every worker, also on a remote cluster, as the
    # driver computes under them: a jax.config change too, which no worker inherits (they were
    # passed on from the driver's environment only). Where JAX runs (JAX_PLATFORMS) stays each
    # worker's own.
    import jax
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    with jax.default_matmul_precision("highest"), jax.enable_x64(True):
        for gpus in (0, 0.5):
            env = worker_env(gpus)
            assert env["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"
            assert env["JAX_ENABLE_X64"] == "1" and env["JAX_THREEFRY_PARTITIONABLE"] == "1"
    assert worker_env(0)["JAX_ENABLE_X64"] == "0"
    assert "JAX_DEFAULT_MATMUL_PRECISION" not in worker_env(0)
    assert "JAX_PLATFORMS" not in worker_env(0.5)


def test_a_driver_with_gpu_workers_takes_gpu_memory_as_needed(monkeypatch):
    """JAX preallocates 75% of a GPU when it starts; the workers' shares of that card would
    not fit beside a driver on it."""
    from jobs._cli import gpus_per_worker
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    gpus_per_worker("0")
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
    gpus_per_worker("0.25")
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # Phase 1's learner too (it parsed the flag with its own option type, and preallocated).
    from jobs.train_grpo import build_parser, config_from_args
    for gpus in ("0", "0.25"):
        monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
        run, _ = config_from_args(build_parser().parse_args(["--gpus-per-worker", gpus,
                                                              "--num-workers", "1"]))
        assert os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == (None if gpus == "0"
                                                                    else "false")


def test_workers_refuse_library_code_other_than_the_drivers(monkeypatch):
    from causal_grpo.errors import UserError
    from cluster.connect import DRIVER_CODE_ENV, worker_env
    from cluster.pool import Worker
    for gpus in (0, 0.5):
        monkeypatch.setenv(DRIVER_CODE_ENV, worker_env(gpus)[DRIVER_CODE_ENV])
        Worker()
    monkeypatch.setenv(DRIVER_CODE_ENV, "0" * 16)
    with pytest.raises(UserError, match=r"other causal_grpo code \(\w{16}\) than the driver"):
        Worker()


def test_workers_refuse_jax_releases_other_than_the_drivers(monkeypatch):
    """Cells are keyed by the driver's jax/jaxlib: a node with other releases would store its
    numbers under the driver's key."""
    from causal_grpo.errors import UserError
    from cluster.connect import DRIVER_RELEASES_ENV, worker_env
    from cluster.pool import Worker
    for gpus in (0, 0.5):
        monkeypatch.setenv(DRIVER_RELEASES_ENV, worker_env(gpus)[DRIVER_RELEASES_ENV])
        Worker()
    monkeypatch.setenv(DRIVER_RELEASES_ENV, "jax 0.9.0, jaxlib 0.9.0")
    with pytest.raises(UserError, match=r"runs jax [\d.]+, jaxlib [\d.]+, the driver jax 0.9.0"):
        Worker()


def test_gpu_workers_packed_on_one_card_ask_for_at_most_90_percent_of_it(monkeypatch):
    """Each GPU worker's allocator limit is 0.9 of its Ray share, rounded down, however small
    the share (a floor of 5% once let 40 workers at 0.025 ask for twice the card), and a
    newer name of the same setting that a node sets is dropped before JAX starts, as jaxlib
    refuses to start with both."""
    import math

    from causal_grpo.errors import UserError
    from cluster.connect import (GPU_WORKER_ENV, MEM_FRACTION_ENV, NEWER_MEM_FRACTION_ENV,
                                 worker_env)
    from cluster.pool import Worker
    for share in (1e-4, 0.025, 0.03, 0.125, 1 / 3, 0.5, 1, 4):
        fraction = float(worker_env(share)[MEM_FRACTION_ENV])
        per_card = max(1, math.floor(1 / share + 1e-9))       # workers Ray packs on one card
        assert per_card * fraction <= 0.9
        assert fraction == pytest.approx(0.9 * min(share, 1), abs=1e-6)
    monkeypatch.setenv(NEWER_MEM_FRACTION_ENV, "0.5")
    monkeypatch.setenv(GPU_WORKER_ENV, "1")
    with pytest.raises(UserError, match="has a GPU share but JAX there computes on cpu"):
        Worker()                                                 # no GPU here
    assert NEWER_MEM_FRACTION_ENV not in os.environ
