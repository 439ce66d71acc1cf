"""Shared CLI plumbing: one-line errors with exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import signal
import sys
import threading
import traceback
from typing import Callable

from causal_grpo import io, options
from causal_grpo.errors import RunFailure, UserError
from causal_grpo.options import INT_MAX, SEED_MAX, Option, shown


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (``prog: error: ...``) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        # "argument --seeds: --seeds must be ..." -> "--seeds must be ..."
        fail(self.prog, re.sub(r"^argument (\S+): (?=\1 )", "", message))


def fail(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(2)


INTERRUPTED = 130


def run_script(main: Callable[[], int | None]) -> None:
    """The ``__main__`` entry of every job: ``sys.exit(main())``, except that an interrupted run
    exits without the interpreter's teardown. Interrupted while XLA compiled a batch program
    (on threads of its own), finalising Python segfaulted (exit 139 after the one-line
    message). Finished work is already on disk (atomic renames); what the
    teardown would have done that matters is flushing our streams and leaving Ray."""
    try:
        code = main()
    except SystemExit as e:
        if e.code != INTERRUPTED:
            raise
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        ray = sys.modules.get("ray")
        try:
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        finally:                        # whatever shutdown raised (a second Ctrl-C too): exit
            os._exit(INTERRUPTED)
    sys.exit(code)


def _interrupt_again_if_swallowed(previous_hook: Callable) -> Callable:
    """A ``sys.unraisablehook``. Ctrl-C raised while Python runs a finaliser or a garbage-collector
    callback (JAX frees device buffers from one) is printed as "Exception ignored" and dropped,
    and the run went on. The interrupt is sent again a moment later, from outside the callback."""
    def hook(unraisable):
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            again.daemon = True
            again.start()
        else:
            previous_hook(unraisable)
    return hook


_depth = [0]         # jobs running in this process under user_errors_exit_2


def out_of_memory(e: BaseException) -> str | None:
    """XLA's out-of-memory error (host or accelerator; the memory checks before a run estimate,
    a device may hold less, or other processes may take it), as one line; None for any other.
    From a Ray worker it arrives wrapped in a RayTaskError."""
    import jax
    cause = getattr(e, "cause", None) or e
    text = str(cause)
    if not isinstance(cause, jax.errors.JaxRuntimeError) or "RESOURCE_EXHAUSTED" not in text:
        return None
    what = next(line for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line)
    return (f"ran out of memory ({' '.join(what.split())[:200]}); finished work is kept: rerun "
            "with less at once (a smaller --batch-size where the job has one, fewer seeds or "
            "workers per machine)")


# Where storage fails under a running job (the output directory was checked before it began).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def storage_failure(e: BaseException) -> str | None:
    """A write that the disk refused mid-run (full, a quota, read-only, permissions changed,
    an I/O error) as one line; None for any other error. Results are written whole under a
    temporary name, so whatever finished before it is on disk. From a Ray worker it arrives
    wrapped in a RayTaskError."""
    cause = getattr(e, "cause", None) or e
    if not isinstance(cause, OSError) or cause.errno not in STORAGE_ERRNOS:
        return None
    where = f" at {cause.filename}" if cause.filename else ""
    return (f"storage failed{where}: {cause.strerror or cause}; finished work is kept: free "
            "space or fix the directory, then rerun to resume")


def backend_failure(e: BaseException) -> tuple[str, int] | None:
    """JAX unable to start a backend, as (one line, exit code); None for any other error.
    Where JAX_PLATFORMS names one not installed here (a bare AssertionError for ``cuda``,
    "Unable to initialize backend" for others) it is bad input (2); with JAX_PLATFORMS unset,
    an accelerator that fails to start (its driver, its memory) is a failure of the run (1).
    JAX starts its backend at its first computation, so the check cannot come sooner without
    starting it before the flags that configure it are read."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or not frames[-1].filename.endswith(os.path.join("jax", "_src", "xla_bridge.py")):
        return None
    text = " ".join(str(e).split())
    if isinstance(e, AssertionError) and not text:
        detail = "no such backend is installed"
    elif isinstance(e, RuntimeError) and text.startswith("Unable to initialize backend"):
        detail = text[:300]
    else:
        return None
    platforms = os.environ.get("JAX_PLATFORMS")
    if platforms:
        return (f"JAX cannot start the backend JAX_PLATFORMS={platforms!r} names ({detail}); "
                "unset JAX_PLATFORMS, or install jax for that platform", 2)
    return (f"JAX cannot start its backend ({detail}); check the accelerator and its driver, "
            "or compute on the CPU with JAX_PLATFORMS=cpu", 1)


def user_errors_exit_2(prog: str) -> Callable:
    """Decorator: a :class:`UserError` becomes one line on stderr and exit code 2, a
    :class:`RunFailure`, running out of memory or a failed write one line and exit code 1."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            # Under `> log`, `ray job submit` and CI, lines must appear as they happen.
            for stream in (sys.stdout, sys.stderr):
                if not stream.isatty() and hasattr(stream, "reconfigure"):
                    stream.reconfigure(line_buffering=True)
            from causal_grpo.jaxcache import enable_compilation_cache, pin_cpu_numerics
            pin_cpu_numerics()
            enable_compilation_cache()
            previous_hook = sys.unraisablehook
            sys.unraisablehook = _interrupt_again_if_swallowed(previous_hook)
            _depth[0] += 1
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                # Raised in a Ray worker, it arrives as RayTaskError(UserError), whose text is
                # the remote traceback; the message is its cause's.
                cause = getattr(e, "cause", None)
                fail(prog, str(cause if isinstance(cause, UserError) else e))
            except RunFailure as e:
                sys.stderr.write(f"{prog}: {' '.join(str(e).split())}\n")
                raise SystemExit(1)
            except (RuntimeError, AssertionError) as e:
                failed = backend_failure(e)
                if failed is not None and failed[1] == 2:
                    fail(prog, failed[0])
                line = failed[0] if failed else (
                    out_of_memory(e) if isinstance(e, RuntimeError) else None)
                if line is None:
                    raise
                sys.stderr.write(f"{prog}: {line}\n")
                raise SystemExit(1)
            except OSError as e:
                line = storage_failure(e)
                if line is None:
                    raise
                sys.stderr.write(f"{prog}: {line}\n")
                raise SystemExit(1)
            except KeyboardInterrupt:
                sys.stderr.write(f"{prog}: interrupted; finished work is kept, rerun to resume\n")
                raise SystemExit(INTERRUPTED)
            finally:
                sys.unraisablehook = previous_hook
                _depth[0] -= 1
                if not _depth[0]:       # the job's end (main runs the others unwrapped)
                    io.release_dir_locks()
        return wrapper

    return deco


# No float setting of this project means anything beyond this; larger is a typo.
FLOAT_MAX = 1e6


def option_type(opt: Option) -> Callable[[str], object]:
    """An argparse ``type`` that reads and checks ``opt``'s value (:func:`options.parse`: the one
    place where every job's flag bounds are checked and their messages worded)."""
    def parse(text: str):
        try:
            return options.parse(opt, text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = opt.flag    # argparse names the type in some messages
    return parse


def positive_int(name: str, minimum: int = 1, maximum: int = INT_MAX) -> Callable[[str], int]:
    """An integer in [minimum, maximum]."""
    return option_type(Option(name, "", int, minimum, maximum))


def seed_int(name: str) -> Callable[[str], int]:
    """A PRNG seed: 0..2**32-1."""
    return positive_int(name, 0, SEED_MAX)


# Each draw costs two posterior updates per candidate variable, vmapped over the batch; "auto"
# uses 8 at most.
MAX_LOOKAHEAD_DRAWS = 64


def lookahead_draws(text: str) -> int | str:
    """``--lookahead-draws``: "auto" or an integer in 1..MAX_LOOKAHEAD_DRAWS."""
    if text == "auto":
        return text
    try:
        return positive_int("--lookahead-draws", 1, MAX_LOOKAHEAD_DRAWS)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--lookahead-draws must be 'auto' or an integer in "
                                         f"[1, {MAX_LOOKAHEAD_DRAWS}], got {shown(text)}") from None


def positive_float(name: str, allow_zero: bool = False,
                   maximum: float = FLOAT_MAX) -> Callable[[str], float]:
    """A finite number in (0, maximum] ([0, maximum] with ``allow_zero``); nan/inf refused."""
    return option_type(Option(name, "", float, 0.0, maximum, open_low=not allow_zero))


def gpus_per_worker(text: str) -> float:
    """``--gpus-per-worker``: a share of one GPU, or a whole number of GPUs (as Ray accepts)."""
    from cluster.connect import check_gpus_per_worker
    v = positive_float("--gpus-per-worker", allow_zero=True, maximum=1024)(text)
    try:
        check_gpus_per_worker(v)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    share_gpu_with_workers(v)
    return v


def share_gpu_with_workers(gpus_per_worker: float) -> None:
    """With GPU workers, this process does not preallocate its GPU's memory (read when JAX
    first starts, after the flags): its workers may share that GPU."""
    if gpus_per_worker > 0:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def check_ray_flags(address: str | None, num_workers: int, gpus_per_worker: float = 0.0) -> None:
    """``--address`` and ``--gpus-per-worker`` are only used by Ray workers: refused with
    ``--num-workers 0`` (the job would run in this process and ignore them)."""
    for flag, given in (("--address", address), ("--gpus-per-worker", gpus_per_worker)):
        if given and num_workers == 0:
            raise UserError(f"{flag} needs --num-workers N >= 1: with 0 the job runs in this "
                            "process, without Ray")


def comma_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {shown(text)}")
    return items


def list_of(parse_one: Callable[[str], object], length: int | None = None,
            distinct: bool = False, ordered: bool = False) -> Callable[[str], list]:
    """A comma-separated list whose items ``parse_one`` validates (exactly ``length`` of them;
    ``distinct``: none twice, where a repeat would only compute a row again; ``ordered``: a
    range lo,hi, so none above the next)."""
    def parse(text: str) -> list:
        items = [parse_one(t) for t in comma_list(text)]
        if length is not None and len(items) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated values, got {shown(text)}")
        if distinct and len(set(items)) < len(items):
            raise argparse.ArgumentTypeError(f"lists a value twice: {shown(text)}")
        if ordered and items != sorted(items):
            raise argparse.ArgumentTypeError(f"is a range lo,hi with lo <= hi, got {shown(text)}")
        return items
    return parse


# Host memory per (cell, step) row of the results (arrays, tables, pickles): measured about
# 460 B on a 1,024-cell x 401-step sweep; doubled.
HOST_BYTES_PER_STEP = 1000
# XLA holds a few copies of a scan's carry (buffer, step records) while a batch runs.
DEVICE_COPIES = 4
# Fields of active_learning.StepRecord (imported lazily; a test keeps the two equal).
RECORD_FIELDS = 13


def phase2_memory_bytes(d: int, batch: int, n_observational: int, n_interventions: int,
                        cells: int, neural: bool = False) -> int:
    """Memory a Phase-2 sweep needs: one vmapped batch of episodes plus every cell's records.

    d: largest number of variables; batch: seeds per vmapped batch; cells: scms x methods x seeds.
    """
    rows, steps = n_observational + n_interventions, n_interventions + 1
    per_seed = rows * d * 5 + steps * RECORD_FIELDS * 4     # values float32 + mask bool
    if neural:  # its own copy of the data, and (rows, d, d) gates with their gradients
        per_seed += rows * d * 5 + rows * d * d * 4 * 8
    return DEVICE_COPIES * batch * per_seed + cells * steps * HOST_BYTES_PER_STEP


def refuse_oversized(needed: int, sizes: dict[str, tuple], what: str) -> None:
    """Raise a one-line :class:`UserError` when ``needed`` bytes exceed the available memory.

    sizes: flag -> (value, default) or (value, default, how to name it); the flag furthest
    above its default is the one named.
    """
    available = io.available_memory_bytes()
    if needed > available:
        flag = max(sizes, key=lambda f: sizes[f][0] / sizes[f][1])
        named = sizes[flag][2] if len(sizes[flag]) > 2 else f"{flag} {sizes[flag][0]}"
        raise UserError(f"{named} is too large: {what} would need about "
                        f"{io.format_bytes(needed)} of memory and this machine has "
                        f"{io.format_bytes(available)} available")

