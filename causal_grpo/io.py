"""Atomic file output: a reader never sees a half-written result, a crash leaves none behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

from causal_grpo.errors import UserError


TMP_PREFIX = ".tmp-"
# A checkpoint being written, and the one it replaces (checkpoint.save_checkpoint).
CKPT_TMP_PREFIX, CKPT_OLD_PREFIX = ".tmp-ckpt-", ".old-ckpt-"


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it: os.umask sets it,
    for a moment, for every thread (Ray's and tqdm's create files too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    # Hidden (a killed writer's leftover stays out of "*.npz" globs) but with the real
    # extension, which writers such as matplotlib's savefig read the format from.
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path),
                               dir=directory)
    os.close(fd)
    # mkstemp creates 0600; results are ordinary files, so honour the umask like open() does.
    os.chmod(tmp, 0o666 & ~_umask())
    staged = getattr(_update, "files", None)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if staged is None:
            os.replace(tmp, path)
        else:                                   # renamed when the one_update block ends
            staged.append((tmp, path))
            tmp = ""
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


_update = threading.local()


@contextlib.contextmanager
def one_update() -> Iterator[None]:
    """Several files written as one update: inside the block, :func:`atomic_path` (so every
    ``write_*`` here) and :func:`remove` only stage their work; when the block ends the renames
    and removals happen together, with SIGINT and SIGTERM held back, so that an interrupt
    leaves all of the old files or all of the new ones (only a kill -9 in those microseconds
    could split them). An exception in the block leaves the old files and no temporaries."""
    if getattr(_update, "files", None) is not None:    # inside another: that one publishes
        yield
        return
    files: list[tuple[str | None, str]] = []
    _update.files = files
    try:
        yield
        with signals_held():
            for tmp, path in files:
                if tmp is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                else:
                    os.replace(tmp, path)
    finally:
        _update.files = None
        for tmp, _ in files:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)


def remove(path: str) -> None:
    """Delete ``path`` (inside :func:`one_update`, with its other files)."""
    staged = getattr(_update, "files", None)
    if staged is not None:
        staged.append((None, path))
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive in the block take effect when it ends (main thread; a
    signal's Python handler runs there only, so elsewhere there is nothing to hold)."""
    import signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda n, _frame: got.append(n)) for s in held}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if got:
            signal.raise_signal(got[0])


def write_atomic(path: str, writer: Callable[[str], None]) -> None:
    """Run ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def drop_stale_partials(directory: str, min_age_s: float = 60.0) -> None:
    """Delete temporaries of :func:`atomic_path` (and checkpoint directories being written
    or replaced) older than ``min_age_s`` in ``directory``; a checkpoint set aside for its
    replacement whose place is empty (its writer was killed between the two renames) is put
    back instead.

    A writer killed mid-write leaves its temporary behind. Writing a result takes
    milliseconds, so one a minute old belongs to a dead writer, not a live one.
    """
    now = time.time()
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path):
            try:
                if now - os.stat(path).st_mtime > min_age_s:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        elif name.startswith((CKPT_TMP_PREFIX, CKPT_OLD_PREFIX)) and os.path.isdir(path):
            try:
                if now - os.stat(path).st_mtime > min_age_s:
                    if name.startswith(CKPT_OLD_PREFIX):
                        for kept in os.listdir(path):
                            if not os.path.exists(os.path.join(directory, kept)):
                                os.rename(os.path.join(path, kept),
                                          os.path.join(directory, kept))
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass


def write_text(path: str, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    write_atomic(path, w)


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_pickle(path: str, obj: Any) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    write_atomic(path, w)


# Directories this process created (ensure_writable_dir): the only ones a refused run removes.
_MADE: set[str] = set()


def _make_dirs(path: str) -> None:
    """``os.makedirs`` that notes each level this process created; one another process made
    first (two runs starting at once) is not noted."""
    missing, level = [], os.path.abspath(path)
    while not os.path.isdir(level) and os.path.dirname(level) != level:
        missing.append(level)
        level = os.path.dirname(level)
    for level in reversed(missing):
        try:
            os.mkdir(level)
        except FileExistsError:
            continue
        _MADE.add(level)


@contextlib.contextmanager
def no_new_dirs_if_refused(*paths: str) -> Iterator[None]:
    """Checks inside the block that create ``paths`` (:func:`ensure_writable_dir`) leave none
    of them behind when a later check refuses the run (:class:`UserError`), or anything else
    stops it before it wrote a file there: each that did not exist is removed again while it
    holds only empty directories this process made (a sweep's cell directories, made before a
    Ray cluster is found wanting), with the parents made for it. Directories another process
    made, or that hold a file, are kept."""
    new = [p for p in map(os.path.abspath, paths) if not os.path.exists(p)]
    finished = False
    try:
        yield
        finished = True
    finally:
        for path in new if not finished else ():
            for below, _, _ in os.walk(path, topdown=False):
                if below in _MADE:
                    with contextlib.suppress(OSError):        # holds a file: kept
                        os.rmdir(below)
                        _MADE.discard(below)
            parent = os.path.dirname(path)
            while parent in _MADE and not os.path.exists(path):
                try:
                    os.rmdir(parent)
                except OSError:               # holds something else: kept
                    break
                _MADE.discard(parent)
                path, parent = parent, os.path.dirname(parent)


# Directory -> the descriptor of it this process holds an exclusive flock on.
_LOCKS: dict[str, int] = {}


def _lock(path: str) -> None:
    path = os.path.abspath(path)
    if path in _LOCKS:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:         # a directory that can be written but not read
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"output directory {path} is in use by another run (still running?); "
                        "wait for it to end or use another directory") from None
    except OSError:         # a file system without flock
        os.close(fd)
        return
    _LOCKS[path] = fd


def release_dir_locks() -> None:
    """Release every lock :func:`ensure_writable_dir` took (a job's end; exiting does too)."""
    while _LOCKS:
        os.close(_LOCKS.popitem()[1])


def ensure_writable_dir(path: str, exclusive: bool = False) -> str:
    """Create ``path`` if needed and check that files can be created in it. ``exclusive``: this
    process writes there until :func:`release_dir_locks`, and a second run on this machine that
    asks the same at the same time (a job submitted again while the first runs) is refused
    (flock: on a network file system, processes of other machines do not see the lock)."""
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"output path {path} exists and is not a directory")
        _make_dirs(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise UserError(f"cannot create output directory {path}: "
                        f"{getattr(e, 'strerror', None) or e}") from None
    if not os.path.isdir(path):
        raise UserError(f"output path {path} exists and is not a directory")
    try:
        # As long as the longest name a run writes here (the temporary of
        # comparison_results_<100-character SCM name>.pkl), so a too-long path fails now.
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix="-" + "x" * 130, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output directory {path} is not writable: {e.strerror}") from None
    if exclusive:
        _lock(path)
    return path


def check_output_file(path: str, flag: str) -> str:
    """Refuse now an output file that could not be written at the end of a run: no file name,
    a directory, a folder that cannot be written, a name too long for its temporary."""
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is not a file name; give one, e.g. table.csv")
    directory = ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    try:        # the temporary atomic_path writes it through
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path),
                                     dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write it ({e.strerror})") from None
    return path


def _read_first(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def available_memory_bytes() -> int:
    """Memory this process can still use: the kernel's MemAvailable, capped by a cgroup limit."""
    meminfo = _read_first("/proc/meminfo") or ""
    found = [line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    if found:
        avail = int(found[0]) * 1024
    else:  # not Linux
        avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # A container's limit (cgroup v2, then v1) can be far below the machine's memory.
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, used = _read_first(limit), _read_first(usage)
        if lim and lim.isdigit() and used and used.isdigit():
            avail = min(avail, max(0, int(lim) - int(used)))
    return avail


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory (VmRSS), or None where /proc cannot tell (gone, not Linux)."""
    for line in (_read_first(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def format_bytes(n: float) -> str:
    """``1.5 GB``-style size for messages (decimal units)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"
