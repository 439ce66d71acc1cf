"""A Phase-2 sweep as a set of cells (scm, method, seed), run in batches and persisted.

The unit of work is a :class:`Batch`: one SCM source, one method and a fixed tuple of seeds,
run as one ``jit(vmap(run_episode))`` call. Batches are planned deterministically from the
sweep config alone, so a cell gives bit-identical results however many processes or machines
run the sweep and in whatever order. Each finished batch is written atomically to a
:class:`CellStore`; rerunning a sweep skips stored batches. This module never imports Ray:
``cluster/`` distributes the same ``run_batch`` calls.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import sys
import zipfile
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo import io
from causal_grpo.active_learning import (EpisodeConfig, Method, StepRecord, make_batch_runner,
                                         make_plugin_selector, method_id)
from causal_grpo.errors import UserError
from causal_grpo.jaxcache import build, numerics
from causal_grpo.policy import PolicyHandle, episode_selector, resolve_lookahead_draws
from causal_grpo.scm import SCM, stack_scms
from causal_grpo.scm_families import FamilyConfig, ScmSource, instantiate, resolve_scm
from causal_grpo.surrogate import make_surrogate
from causal_grpo.version import source_id

Array = jax.Array


# Planned up front (a million take about a second); far beyond any sweep that could finish.
MAX_BATCHES = 10 ** 6


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What to run: SCM names (fixed, family or JSON path) x methods x seeds 0..seeds-1."""

    scms: tuple[str, ...]
    methods: tuple[Method, ...]
    seeds: int
    episode: EpisodeConfig = EpisodeConfig()
    base_seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        # The Python API refuses what the CLIs refuse, in one line, rather than running a cell
        # twice, splitting a string into one-letter SCMs or planning without end.
        from causal_grpo.options import SEED_MAX, check_integer, shown
        for name in ("scms", "methods"):
            given = getattr(self, name)
            if isinstance(given, (str, Method)) or not isinstance(given, (list, tuple)):
                raise UserError(f"SweepConfig.{name} must be a tuple, got {shown(given)}")
            if not given or len(set(given)) < len(given):
                raise UserError(f"SweepConfig.{name} must be non-empty, each once; got "
                                f"{shown(given)}")
        try:
            methods = tuple(m if isinstance(m, Method) else Method(m) for m in self.methods)
        except ValueError:
            raise UserError(f"SweepConfig.methods: unknown method in {shown(self.methods)}; "
                            f"use {', '.join(m.value for m in Method)}") from None
        object.__setattr__(self, "scms", tuple(self.scms))
        object.__setattr__(self, "methods", methods)
        for name, low in (("seeds", 1), ("batch_size", 1), ("base_seed", 0)):
            check_integer(f"SweepConfig.{name}", getattr(self, name), low, SEED_MAX)
        batches = len(self.scms) * len(self.methods) * -(-self.seeds // self.batch_size)
        if batches > MAX_BATCHES:
            raise UserError(f"SweepConfig plans {batches} batches, more than {MAX_BATCHES}; "
                            "fewer seeds or a larger batch_size")
        if not isinstance(self.episode, EpisodeConfig):
            raise UserError(f"SweepConfig.episode must be an EpisodeConfig, got "
                            f"{shown(self.episode)}")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One unit of work: ``seeds`` of one (scm, method)."""

    scm: str
    method: Method
    seeds: tuple[int, ...]

    @property
    def cells(self) -> list[tuple[str, str, int]]:
        return [(self.scm, self.method.value, s) for s in self.seeds]


def plan_batches(cfg: SweepConfig) -> list[Batch]:
    """Deterministic batches: per scm and method, seeds in consecutive chunks of batch_size."""
    out = []
    for scm in cfg.scms:
        for method in cfg.methods:
            for start in range(0, cfg.seeds, cfg.batch_size):
                seeds = tuple(range(start, min(start + cfg.batch_size, cfg.seeds)))
                out.append(Batch(scm, method, seeds))
    return out


def cell_root_key(base_seed: int, seed: int) -> Array:
    """The key of cell ``seed``, the same for every SCM: random families of one size draw
    their noise scales, weights and target from it alike (er10 and sf10 at one seed share
    them; ``mixed<d>`` repeats a family's SCM when it picks that family), so rows of
    different SCMs are not independent samples (Holm's correction holds under any
    dependence). Keyed by the SCM too, every published cell would change."""
    return jax.random.fold_in(jax.random.PRNGKey(base_seed), seed)


def cell_scm_and_key(src: ScmSource, base_seed: int, seed: int) -> tuple[SCM, Array]:
    """The SCM of a cell (a random family draws it from the seed) and its episode key."""
    k_scm, k_episode = jax.random.split(cell_root_key(base_seed, seed))
    return instantiate(src, k_scm), k_episode


def cell_batch(src: ScmSource, base_seed: int, seeds: Sequence[int]) -> tuple[SCM, Array]:
    """The cells of ``seeds`` as one vmappable batch: stacked SCMs (S, ...) and keys (S, 2)."""
    pairs = [cell_scm_and_key(src, base_seed, s) for s in seeds]
    return stack_scms([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


# Compiled programs kept alive at once, least recently used dropped first. XLA's CPU code for
# one large program holds thousands of memory mappings (about 7,000 for the lookahead policy
# at d = 12) and Linux allows 65,530 per process by default. Eight covers an evaluation's
# policy sweeps over its seven non-dense SCMs without recompiling.
MAX_PROGRAMS = 8
_RUNNERS: collections.OrderedDict = collections.OrderedDict()


def _runner(episode: EpisodeConfig, method: Method, d: int, policy: PolicyHandle | None):
    """One compiled program per (episode config, d) for built-ins, one for ``plugin_active``
    and one per policy architecture (weights are an argument: a run's untrained and trained
    policies, or several runs, share it)."""
    if method is Method.PLUGIN:
        key = (episode, d, method.value)
    else:
        program = None
        if method.needs_policy:
            program = (policy.digest if policy.config is None else
                       (policy.config, policy.greedy, policy.lookahead_draws))
        key = (episode, d, program)
    if key in _RUNNERS:
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]
    if len(_RUNNERS) >= MAX_PROGRAMS:
        _RUNNERS.popitem(last=False)
        # Dropping a program leaves a few hundred mappings in JAX's inner caches; clearing
        # them keeps a long sweep that cycles through many programs bounded (the kept ones
        # reload from the persistent compilation cache).
        gc.collect()
        jax.clear_caches()
    if method is Method.PLUGIN:
        surrogate = make_surrogate(episode.surrogate, d, episode.capacity)
        draws = resolve_lookahead_draws(episode.lookahead_draws, d)
        selector = make_plugin_selector(surrogate, draws)
    else:
        selector = (episode_selector(policy, episode.surrogate.analytic)
                    if method.needs_policy else None)
    _RUNNERS[key] = _Program(make_batch_runner(episode, d, selector))
    return _RUNNERS[key]


class _Program:
    """A batch runner compiled ahead of time, once per argument shapes, so that what its
    buffers need is known before it runs (``jit``'s own first call would compile and run in
    one go)."""

    def __init__(self, run):
        self.run = run
        self.executables: dict[str, Any] = {}
        self.needs: dict[str, int] = {}

    def __call__(self, args: tuple, what: str, share: int = 1, registry: str | None = None):
        # A program is compiled for the device it will run on (``jax.default_device``).
        shapes = str(jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), args)) + str(
            jax.config.jax_default_device)
        if shapes not in self.executables:
            exe = self.run.lower(*args).compile()
            self.needs[shapes] = check_program_memory(exe, what, share, registry)
            self.executables[shapes] = exe
        with running_program(registry, self.needs[shapes]):
            return jax.block_until_ready(self.executables[shapes](*args))


def check_program_memory(executable: Any, what: str, share: int = 1,
                         registry: str | None = None, device: Any = None) -> int:
    """Refuse (one-line :class:`UserError`) a compiled program whose buffers, by XLA's own
    buffer assignment, exceed what it can have of the memory of the device it runs on
    (``device``; None: ``jax.default_device``, else JAX's first device).

    On the CPU: this process's part of the memory still available, all of it or 1/``share``
    where ``share`` workers run such programs on one machine (measured: a 25-seed ``dense10``
    policy batch, 10.6 GB by this figure, peaked at 11.7 GB of RSS over a 1.1 GB start). What
    the other workers' running programs already took (``registry``, :func:`held_by_others`)
    counts towards the share, not against it. On an accelerator: what this process's allocator
    has left (``memory_stats``: its limit, a fraction of the card that the Ray layer sets for
    its GPU workers, less what it holds); unchecked where the device gives no limit.
    Returns the program's need of host memory in bytes (0 on an accelerator or where unknown).
    """
    if device is None:
        device = jax.config.jax_default_device or jax.devices()[0]
        if isinstance(device, str):                         # a platform name
            device = jax.devices(device)[0]
    try:
        m = executable.memory_analysis()
        need = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    except (AttributeError, NotImplementedError, TypeError):
        return 0
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
            if need > free:
                raise UserError(
                    f"{what} would need about {io.format_bytes(need)} of {device.device_kind} "
                    f"memory and this process has {io.format_bytes(free)} of it; lower "
                    "--batch-size (a batch size of its own needs an output directory of its "
                    "own), or give the process more of the card (Ray GPU workers: "
                    "--gpus-per-worker up to 1; in-process: XLA_CLIENT_MEM_FRACTION)")
        return 0
    available = io.available_memory_bytes()
    shared = available + (held_by_others(registry) if share > 1 else 0)
    if need > available or need * share > shared:
        # The figure that refused it: what is free now, or what the workers share.
        each = f" for each of {share} workers" if need <= available else ""
        has = io.format_bytes(shared if need <= available else available)
        raise UserError(f"{what} would need about {io.format_bytes(need)} of memory{each} "
                        f"and this machine has {has} available; lower "
                        f"--batch-size{' or --num-workers' if share > 1 else ''} (a batch "
                        "size of its own needs an output directory of its own)")
    return int(need)


def held_by_others(registry: str | None) -> int:
    """Memory that the other workers of a sweep on this machine have taken for the programs
    they are running now, by the notes of :func:`running_program` in ``registry``: per worker,
    what its resident memory grew by since its program began, at most that program's need.
    MemAvailable already lacks it, so a worker checking its share adds it back rather than
    counting a running sibling twice (with two workers, the second to compile was refused
    whenever memory held two programs but not three)."""
    if registry is None:
        return 0
    try:
        names = os.listdir(registry)
    except OSError:
        return 0
    held = 0
    for name in names:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(os.path.join(registry, name)) as f:
                need, start = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        now = io.resident_bytes(int(name))
        if now is None:          # a worker killed while it ran: its memory is free again
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(registry, name))
            continue
        held += min(need, max(0, now - start))
    return held


@contextlib.contextmanager
def running_program(registry: str | None, need: int) -> Iterator[None]:
    """While a program runs, note in ``registry`` (one file named by this process's id) its
    need and this process's resident memory before it, for :func:`held_by_others`."""
    start = io.resident_bytes(os.getpid())
    path = None
    if registry is not None and start is not None and need:
        try:
            os.makedirs(registry, exist_ok=True)
            io.write_text(os.path.join(registry, str(os.getpid())), f"{need} {start}")
            path = os.path.join(registry, str(os.getpid()))
        except OSError:      # an unwritable temp space costs the note, not the batch
            pass
    try:
        yield
    finally:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            # The last note out removes the directory (a sibling's note keeps it; one that
            # loses the race to create its note skips that note, not its batch).
            with contextlib.suppress(OSError):
                os.rmdir(registry)


def run_batch(batch: Batch, cfg: SweepConfig, policy: PolicyHandle | None = None,
              sources: dict[str, ScmSource] | None = None, memory_share: int = 1,
              memory_registry: str | None = None) -> dict[str, np.ndarray]:
    """Run one batch in this process; returns stacked numpy arrays, leading axis = seeds.
    Refused before it runs when its program's buffers exceed 1/``memory_share`` of the
    available memory (:func:`check_program_memory`; share: workers on this machine, which
    note what they hold in ``memory_registry``, a directory of this machine).

    Keys: every :class:`StepRecord` field (S, T+1), ``final_probs`` (S, d, d), ``true_adj``
    (S, d, d), ``target`` (S,), ``seed`` (S,). The batch is padded to ``cfg.batch_size`` by
    repeating its last seed, so every batch of a sweep shares one compiled program.
    """
    src = (sources or {}).get(batch.scm) or resolve_scm(batch.scm)
    if batch.method.needs_policy and policy is None:
        raise ValueError(f"method {batch.method.value} needs a trained policy")
    seeds = list(batch.seeds) + [batch.seeds[-1]] * (cfg.batch_size - len(batch.seeds))
    scms, keys = cell_batch(src, cfg.base_seed, seeds)
    run = _runner(cfg.episode, batch.method, scms.adj.shape[-1], policy)
    params = policy.params if batch.method.needs_policy else None
    res = run((keys, scms, params, method_id(batch.method)),
              f"a batch of {cfg.batch_size} seeds of {batch.method.value} on {batch.scm}",
              memory_share, memory_registry)
    n = len(batch.seeds)
    out = {f: np.asarray(getattr(res.record, f))[:n] for f in StepRecord._fields}
    out["final_probs"] = np.asarray(res.final_probs)[:n]
    out["true_adj"] = np.asarray(scms.adj)[:n]
    out["target"] = np.asarray(scms.target)[:n]
    out["seed"] = np.asarray(batch.seeds, np.int64)
    bad = [f for f in ("f1", "shd", "expected_shd") if not np.all(np.isfinite(out[f]))]
    if bad:
        raise FloatingPointError(
            f"non-finite {bad} in cell scm={batch.scm} method={batch.method.value} seeds={batch.seeds}")
    return out


# --------------------------------------------------------------------------- persistence

def sweep_digest(cfg: SweepConfig, policy: PolicyHandle | None, sources: dict[str, ScmSource],
                 scm: str, device: str = "cpu", xla_flags: str | None = None) -> str:
    """Content digest of everything that determines the numbers of ``scm``'s cells (their
    resume key; one per SCM, so that adding an SCM to a sweep keeps the others' cells).

    It includes the code version, JAX's numerics settings, release and XLA flags and the kind
    of device the cells are computed on (``jax.default_backend()`` names; "cpu" adds
    nothing), so cells computed by other code or under other numbers are never reused.
    ``xla_flags``: those of the processes that compute the cells (None: this one's).
    """
    src = sources[scm]
    scm_id = (dataclasses.asdict(src) | {"kind": src.kind.value}
              if isinstance(src, FamilyConfig) else src.to_dict())
    blob = json.dumps({
        "episode": repr(cfg.episode), "base_seed": cfg.base_seed, "batch_size": cfg.batch_size,
        "scm": {scm: scm_id},
        "policy": policy.digest if policy else None,
        "code": source_id(), "numerics": numerics(), "build": build(xla_flags),
    } | ({"device": device} if device != "cpu" else {}), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


CELL_KEYS = frozenset(StepRecord._fields) | {"final_probs", "true_adj", "target", "seed"}


class CellStore:
    """Finished batches as ``.npz`` files under ``root/<digest>/``, written atomically."""

    def __init__(self, root: str, digest: str):
        self.dir = os.path.join(root, digest)
        # Checked now: a resumed run's cell directory may have become read-only since.
        io.ensure_writable_dir(self.dir)
        io.drop_stale_partials(self.dir)

    def path(self, batch: Batch) -> str:
        scm = "".join(c if (c.isalnum() or c in "._-") else "_" for c in batch.scm)
        if scm != batch.scm or len(scm) > 100:
            # Replacing characters can give two SCM paths one name (a/b.json, a_b.json), and a
            # long path exceeds the file system's 255 bytes: such names carry their digest.
            scm = f"{scm[-80:]}-{hashlib.sha256(batch.scm.encode()).hexdigest()[:12]}"
        name = f"{scm}__{batch.method.value}__{batch.seeds[0]}-{batch.seeds[-1]}.npz"
        return os.path.join(self.dir, name)

    def save(self, batch: Batch, arrays: dict[str, np.ndarray]) -> None:
        def w(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        io.write_atomic(self.path(batch), w)

    def load(self, batch: Batch) -> dict[str, np.ndarray] | None:
        """The stored arrays of ``batch``; None if absent or unreadable.

        A damaged cell (truncated, garbage, other keys or seeds) is named on stderr and moved
        aside to ``<name>.corrupt``, so the caller recomputes it; a file the system cannot read
        now (permissions, too many open files, a lost mount) is a :class:`UserError`: its
        content may be fine, and is kept.
        """
        import io as stdio
        path = self.path(batch)
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"cannot read the stored cell {path} ({e.strerror or e}); fix "
                            "that and rerun (finished cells are kept)") from None
        try:
            z = np.load(stdio.BytesIO(data), allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with z:
                arrays = {k: z[k] for k in z.files}
            if set(arrays) != CELL_KEYS:
                raise ValueError(f"keys {sorted(arrays)}")
            if arrays["seed"].tolist() != list(batch.seeds):
                raise ValueError(f"seeds {arrays['seed'].tolist()}")
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            os.replace(path, path + ".corrupt")
            reason = " ".join(f"{type(e).__name__}: {e}".split())
            print(f"corrupt cell {path} ({reason}); moved to {os.path.basename(path)}.corrupt "
                  "and recomputing it", file=sys.stderr, flush=True)
            return None
        return arrays
