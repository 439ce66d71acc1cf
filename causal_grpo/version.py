"""The version of the code that computed a result: part of every cache key of results."""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.metadata
import os

PACKAGE = "causal-grpo"
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))


def source_digest(directory: str = SOURCE_DIR) -> str:
    """sha256 over the library's ``*.py`` files (names and contents, in sorted name order)."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
        with open(path, "rb") as f:
            data = f.read()
        # Name and length delimit each file, so moving code between files changes the digest.
        h.update(f"{os.path.basename(path)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``<package version>+<source digest prefix>``, computed once per process."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree that was never installed: the source digest still identifies it.
        version = "0+uninstalled"
    return f"{version}+{source_digest()[:16]}"
