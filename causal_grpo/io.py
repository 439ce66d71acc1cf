"""Atomic file output: a reader never sees a half-written result, a crash leaves none behind."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import time
from typing import Any, Callable, Iterator

from causal_grpo.errors import UserError


TMP_PREFIX = ".tmp-"


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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str, writer: Callable[[str], None]) -> None:
    """Run ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def drop_stale_partials(directory: str, min_age_s: float = 60.0) -> None:
    """Delete temporaries of :func:`atomic_path` older than ``min_age_s`` in ``directory``.

    A writer killed mid-write leaves its temporary behind. Writing a result takes
    milliseconds, so one a minute old belongs to a dead writer, not a live one.
    """
    now = time.time()
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(directory, name)
            try:
                if now - os.stat(path).st_mtime > min_age_s:
                    os.unlink(path)
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


def ensure_writable_dir(path: str) -> str:
    """Create ``path`` if needed and check that files can be created in it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"output path {path} exists and is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output directory {path} is not writable: {e.strerror}") from None
    return path
