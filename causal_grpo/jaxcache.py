"""How every process of ours sets JAX up: the same CPU numerics everywhere, and JAX's
persistent compilation cache in a per-user directory.

Numerics: with multi-threaded Eigen, XLA's CPU matrix products split their sums across the
threads, so their last bits depend on the thread count, and a near-tie choice then went one way
in a process and the other in a Ray worker (run single-threaded there so that N workers share N
cores): 2 of 600 cells of a frozen-evaluation slice differed. :func:`pin_cpu_numerics` gives
every process the workers' setting; a cell's numbers then do not depend on where it ran, and
the speed of an in-process run did not change (XLA's own loops stay parallel).

Cache:

Compiling our programs takes minutes on a small machine (every Phase-1 stage, every Phase-2
SCM size x method); with the cache a second run, a resumed run and the second Ray worker on a
machine load the compiled executables from disk instead. Entries cut short by a process killed
while writing them are removed when a process enables the cache (:func:`remove_cut_entries`).

``CAUSAL_GRPO_JAX_CACHE`` chooses the directory; "off" or empty disables the cache. Unset:
``$XDG_CACHE_HOME/causal-grpo/jax`` (``~/.cache/causal-grpo/jax``; none without a home
directory).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import zlib
from typing import Callable

ENV_VAR = "CAUSAL_GRPO_JAX_CACHE"
CPU_XLA_FLAG = "--xla_cpu_multi_thread_eigen=false"


def pin_cpu_numerics(environ: "os._Environ | dict" = os.environ) -> None:
    """Add :data:`CPU_XLA_FLAG` to ``XLA_FLAGS`` (other flags kept). XLA reads them when JAX's
    backend starts, so call it before the first computation (the CLIs do, first thing)."""
    flags = environ.get("XLA_FLAGS", "").split()
    if not any(f.startswith("--xla_cpu_multi_thread_eigen") for f in flags):
        environ["XLA_FLAGS"] = " ".join(flags + [CPU_XLA_FLAG])


NUMERICS = ("enable_x64", "default_matmul_precision", "default_prng_impl",
            "threefry_partitionable")


def numerics() -> dict[str, bool | str]:
    """JAX's settings that change what a computation returns (they travel to Ray workers as
    :func:`numerics_env`): part of every resume key, so a run is never continued, nor a cell
    reused, under other numbers."""
    import jax
    c = jax.config
    out = {"enable_x64": bool(c.jax_enable_x64),
           "default_matmul_precision": str(c.jax_default_matmul_precision),
           "default_prng_impl": str(c.jax_default_prng_impl),
           "threefry_partitionable": bool(c.jax_threefry_partitionable)}
    # JAX adds this offset to every seed (JAX_RANDOM_SEED_OFFSET), so it changes every cell's
    # data. In the key only when set: cells and runs made at the default keep their keys.
    if seed_offset():
        out["random_seed_offset"] = seed_offset()
    return out


def seed_offset() -> int:
    """JAX's ``random_seed_offset`` (global only: JAX has no public per-thread setter)."""
    import jax
    return int(jax.config.jax_random_seed_offset)


def numerics_env() -> dict[str, str]:
    """This thread's :data:`NUMERICS` as the environment variables JAX reads when imported (the
    unset ones left out), for a process that must compute as this one: a Ray worker inherits
    its node's environment, not a ``jax.config.update`` of the driver's."""
    import jax
    env = {}
    for name in NUMERICS:
        value = getattr(jax.config, f"jax_{name}")
        if value is not None:
            env[f"JAX_{name.upper()}"] = str(int(value)) if isinstance(value, bool) else str(value)
    # Always, 0 included: a node's own JAX_RANDOM_SEED_OFFSET would otherwise shift a worker's
    # keys under the driver's key for no offset.
    env["JAX_RANDOM_SEED_OFFSET"] = str(seed_offset())
    return env


def releases() -> str:
    """This process's jax and jaxlib releases (Ray workers must run the driver's)."""
    import jax
    import jaxlib
    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"


def build(xla_flags: str | None = None) -> dict[str, str]:
    """What else decides a computation's last bits: the jax and jaxlib releases (their kernels
    and lowering change between patch versions) and the XLA flags the cells are computed under
    (``xla_flags``; None: this process's). Part of every cell's key. Flags keep their order:
    XLA takes the last of a flag given twice."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    return {"releases": releases(), "xla_flags": " ".join(flags.split())}


def carry_numerics(fn: Callable) -> Callable:
    """``fn`` to run on another thread under this thread's :func:`numerics` settings (JAX's
    context managers set them for their own thread only)."""
    import jax
    values = {name: getattr(jax.config, f"jax_{name}") for name in NUMERICS}

    def run(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for name, value in values.items():
                stack.enter_context(getattr(jax, name)(value))
            return fn(*args, **kwargs)

    return run


def cache_dir() -> str | None:
    """The cache directory this process would use, or None when disabled."""
    setting = os.environ.get(ENV_VAR)
    if setting is not None:
        setting = setting.strip()
        return None if setting in ("", "off") else os.path.abspath(os.path.expanduser(setting))
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):     # unset, or relative: invalid by the XDG spec, so ignored
        home = os.path.expanduser("~")
        # No HOME and no passwd entry (a container's arbitrary uid): no cache, rather than one
        # in the working directory or at a shared temporary path another user could fill.
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "causal-grpo", "jax")


# JAX writes an entry in place and never replaces one that exists, so an entry cut short by a
# process killed while writing it (kill -9, a lost node, Ctrl-C between open and write) failed
# to load, warned and was compiled again in every later process. Entries are compressed streams
# whose end is checked (zlib's Adler-32, zstd's frame end): a cut one is found from the file.
_CHECKED = ".checked"  # its modification time: entries changed before it have been checked
_WRITE_GRACE_S = 60.0  # a younger entry may still be being written: never judged
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16
_LEFTOVERS = (_CHECKED + "-", ".probe-")  # this module's temporary files


def _zstd_decompressor() -> tuple | None:
    """A zstd stream decompressor and its error, from the modules JAX compresses with."""
    try:
        from compression import zstd  # Python >= 3.14
        return zstd.ZstdDecompressor(), zstd.ZstdError
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdDecompressor().decompressobj(), zstandard.ZstdError


def _is_cut(path: str) -> bool | None:
    """True for an entry cut short: shorter than any entry (4 bytes), a hole (zeros where a
    stream's magic belongs) or a zlib / zstd stream that breaks or ends before its end marker.
    False for a complete stream (what follows it is JAX's to judge) and for any other format
    (JAX's may change). None for a zstd stream this Python cannot read to its end."""
    with open(path, "rb") as f:
        data = f.read(4)
        if len(data) < 4 or data == bytes(4):
            return True
        if data == _ZSTD_MAGIC:
            reader = _zstd_decompressor()
            if reader is None or not hasattr(reader[0], "eof"):  # zstandard < 0.18 lacks it
                return None
            stream, error = reader
        elif data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
            stream, error = zlib.decompressobj(), zlib.error
        else:
            return False
        try:
            # Small reads: what one read decompresses to stays small.
            while data and not stream.eof:
                stream.decompress(data)
                data = f.read(_CHUNK)
        except error:
            return True
        return not stream.eof


def remove_cut_entries(path: str, grace_s: float | None = None) -> list[str]:
    """Delete the cache entries in ``path`` cut short by a writer killed mid-write; returns their
    names. Only entries changed since the last check, and at least ``grace_s`` (default
    :data:`_WRITE_GRACE_S`) before now by the file system's clock, are read: a start costs a
    directory listing, and a live writer's file is left alone. Change times (not modification
    times, which copies keep) on the file system's clock (a shared disk's, not this machine's)
    decide; the check's mark never passes an entry it could not judge."""
    grace_ns = int(1e9 * (_WRITE_GRACE_S if grace_s is None else grace_s))
    stamp = os.path.join(path, _CHECKED)
    try:
        st = os.stat(stamp)
        # A mark this function wrote is dated at least the grace before it was written; one
        # dated later is a copy (cp without -p dates it at the copy, after entries copied before
        # it) or from a clock set back: judge everything.
        since = st.st_mtime_ns if st.st_mtime_ns <= st.st_ctime_ns - grace_ns else -1
    except OSError:
        since = -1
    removed: list[str] = []
    try:
        fd, mark = tempfile.mkstemp(prefix=_CHECKED + "-", dir=path)
    except OSError:
        return removed
    try:
        os.close(fd)
        until = os.stat(mark).st_ctime_ns - grace_ns  # before the listing: nothing is missed
        with os.scandir(path) as listing:
            entries = list(listing)
        for entry in entries:
            try:
                if not entry.is_file():
                    continue  # a FIFO would block the read
                before = entry.stat()
            except OSError:
                continue  # gone already (another process checking, a cleared cache)
            changed = before.st_ctime_ns
            if entry.name.startswith(_LEFTOVERS) and changed <= until and entry.path != mark:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # of a process killed while it checked
                continue
            if not entry.name.endswith("-cache") or not since < changed <= until:
                continue
            try:
                cut = _is_cut(entry.path)
                if cut:
                    # Only the file judged: a fresh entry written since (another check removed
                    # the cut one) has another inode or change time.
                    now = os.stat(entry.path)
                    if (now.st_ino, now.st_ctime_ns) == (before.st_ino, changed):
                        os.unlink(entry.path)
                        removed.append(entry.name)
            except FileNotFoundError:
                continue
            except (OSError, EOFError, ValueError):
                cut = None
            if cut is None:
                until = min(until, changed - 1)  # judged by a later check
        os.utime(mark, ns=(until, until))
        # A new file rather than the old one's times: those only its owner may set.
        os.replace(mark, stamp)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(mark)
    return removed


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir`; returns the directory.

    Takes effect for compilations after the call. A directory that cannot be created or
    written only costs speed, so it is one warning, not an error (JAX would warn at every
    compilation).
    """
    path = cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        # One line, as every message of a job (a Python warning adds its source line).
        print(f"warning: JAX compilation cache disabled: cannot write to {path} "
              f"({e.strerror}); programs compile anew in every run", file=sys.stderr, flush=True)
        return None
    remove_cut_entries(path)
    settings = {"jax_compilation_cache_dir": path,
                # JAX's default skips programs that compile in under a second: much of our
                # start-up is many such programs besides the few large ones.
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    # No size cap: JAX's least-recently-used eviction is not safe across processes (Ray workers
    # and jobs sharing the directory warned of vanished entries), and our programs are small
    # (a whole Phase-1 start-up is about 4 MB). Deleting the directory reclaims the space.
    # JAX reads these variables when it is imported: the CLIs stay fast (no jax import before
    # their flags are checked), and child processes inherit the setting.
    os.environ.update({name.upper(): str(value) for name, value in settings.items()})
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    return path
