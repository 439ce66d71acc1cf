"""Shared CLI plumbing: one-line errors with exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from causal_grpo.errors import RunFailure, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (``prog: error: ...``) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def fail(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(2)


def user_errors_exit_2(prog: str) -> Callable:
    """Decorator: a :class:`UserError` becomes one line on stderr and exit code 2, a
    :class:`RunFailure` one line and exit code 1."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            # Under `> log`, `ray job submit` and CI, lines must appear as they happen.
            for stream in (sys.stdout, sys.stderr):
                if not stream.isatty() and hasattr(stream, "reconfigure"):
                    stream.reconfigure(line_buffering=True)
            from causal_grpo.jaxcache import enable_compilation_cache
            enable_compilation_cache()
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                fail(prog, str(e))
            except RunFailure as e:
                sys.stderr.write(f"{prog}: {' '.join(str(e).split())}\n")
                raise SystemExit(1)
            except KeyboardInterrupt:
                sys.stderr.write(f"{prog}: interrupted; finished work is kept, rerun to resume\n")
                raise SystemExit(130)
        return wrapper

    return deco


def positive_int(name: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        return v
    return parse


def lookahead_draws(text: str) -> int | str:
    """``--lookahead-draws``: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(
            f"--lookahead-draws must be 'auto' or a positive integer, got {text!r}")
    return v


def positive_float(name: str, allow_zero: bool = False) -> Callable[[str], float]:
    """A finite number > 0 (>= 0 with ``allow_zero``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not ((v >= 0 if allow_zero else v > 0) and v < float("inf")):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{name} must be a finite number {bound}, got {text}")
        return v
    return parse


def comma_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items
