"""The version of the code that computed a result: part of every cache key of results.

The digest covers the library modules a cell's computation can run: everything
:data:`CELL_ROOTS` import, directly or not, at module level or inside functions. Modules that
only read finished cells (tables, statistics) or train policies stay out of it, so changing
them does not throw away hours of finished cells.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
LIBRARY = "causal_grpo"
# A cell is sweep.run_batch; jaxcache sets the numerics of every process that runs one.
CELL_ROOTS = ("__init__", "sweep", "jaxcache")


def _imported(path: str, modules: set[str]) -> set[str]:
    """The library modules ``path`` imports anywhere in its code."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):              # relative: from . import x
            names = [f"{LIBRARY}.{node.module or a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == LIBRARY and len(parts) > 1 and parts[1] in modules:
                found.add(parts[1])
    return found


def cell_modules(directory: str = SOURCE_DIR, roots: tuple[str, ...] = CELL_ROOTS) -> list[str]:
    """The modules (file names without ``.py``) that :data:`CELL_ROOTS` reach by imports."""
    modules = {n[:-3] for n in os.listdir(directory) if n.endswith(".py")}
    seen, todo = set(), [r for r in roots if r in modules]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _imported(os.path.join(directory, f"{m}.py"), modules) - seen
    return sorted(seen)


def source_digest(directory: str = SOURCE_DIR, roots: tuple[str, ...] = CELL_ROOTS) -> str:
    """sha256 over :func:`cell_modules`' files (names and contents, in sorted name order)."""
    h = hashlib.sha256()
    for name in cell_modules(directory, roots):
        with open(os.path.join(directory, f"{name}.py"), "rb") as f:
            data = f.read()
        # Name and length delimit each file, so moving code between files changes the digest.
        h.update(f"{name}.py\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def source_id() -> str:
    """The cells' code version, :func:`source_digest`'s prefix (computed once per process). Not
    the package's version with it: the same code keys its cells alike where the package's
    metadata differs (installed or not, on a node, in a job's upload) and across version bumps."""
    return source_digest()[:16]


@functools.lru_cache(maxsize=None)
def library_id(directory: str = SOURCE_DIR) -> str:
    """sha256 prefix over every module of the library and of the ``cluster`` package beside it
    (the Ray actors' wrappers): the code a Ray worker must share with its driver. Wider than
    :func:`source_id`, which keys cells only: Phase 1's rollouts run modules no cell imports."""
    h = hashlib.sha256()
    for d in (directory, os.path.join(os.path.dirname(directory), "cluster")):
        if not os.path.isdir(d):
            continue
        for name in sorted(n for n in os.listdir(d) if n.endswith(".py")):
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            h.update(f"{os.path.basename(d)}/{name}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]
