"""Command-line options declared once, on the config dataclass fields they set.

A field declared with :func:`option` carries its flag, help text and bounds as metadata.
``jobs/`` generates argparse options from that metadata (:func:`declared`, :func:`parse`), and
a config built in code is checked against the same bounds (:func:`check_options`), so a flag
is written in one place and its value is refused the same way wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from typing import Any, Iterator

import numpy as np

from causal_grpo.errors import UserError

# Counts and sizes become shapes and int32 indices under JAX (x64 off): nothing larger fits.
INT_MAX = 2**31 - 1
# jax.random.PRNGKey keeps only a seed's low 32 bits, so a larger seed would silently repeat
# the cells of a smaller one.
SEED_MAX = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Option:
    """A field's flag, help and bounds (``low``/``high``: inclusive unless ``open_*``)."""

    flag: str
    help: str
    type: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    @property
    def bounds(self) -> str:
        def bound(v: float | None) -> str:     # an integer flag's bound in full, not 1e+07
            return "" if v is None else str(int(v)) if self.type is int else f"{v:g}"

        lo, hi = bound(self.low), bound(self.high)
        return f"{'(' if self.open_low else '['}{lo}, {hi}{')' if self.open_high else ']'}"


def option(default: Any, flag: str, help: str, type: type | None = None,
           low: float | None = None, high: float | None = None, open_low: bool = False,
           open_high: bool = False) -> Any:
    """A dataclass field whose value can be set by ``flag`` (``type`` defaults to the
    default's type; an Enum type offers its values)."""
    opt = Option(flag, help, type or default.__class__, low, high, open_low, open_high)
    return dataclasses.field(default=default, metadata={"option": opt})


def shown(value: Any) -> str:
    """``value`` as a message quotes it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def member(owner: Any, name: str, kind: type[enum.Enum]) -> None:
    """A frozen dataclass's enum field given as a member's value (as the CLIs spell it, e.g.
    ``score="bge"``) becomes that member; anything else is refused in one line. A string was
    kept as given, and compared by identity it silently chose another branch."""
    value = getattr(owner, name)
    if isinstance(value, kind):
        return
    values = [m.value for m in kind]
    if isinstance(value, str) and value in values:
        object.__setattr__(owner, name, kind(value))
        return
    raise UserError(f"{type(owner).__name__}.{name} must be one of {', '.join(map(str, values))}, "
                    f"got {shown(value)}")


def is_integer(value: Any) -> bool:
    """An integer as a count or an index: Python's or NumPy's, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check(opt: Option, value: Any) -> Any:
    """``value`` if it lies within ``opt``'s type and bounds; UserError naming the flag if not."""
    if value is None or issubclass(opt.type, (str, enum.Enum)):
        return value
    kind = "an integer" if opt.type is int else "a finite number"
    # NumPy's integers and floats too (a seed from np.arange); not bools.
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or (opt.type is int and not is_integer(value))
            or not math.isfinite(value)):
        raise UserError(f"{opt.flag} must be {kind}, got {shown(value)}")
    below = opt.low is not None and (value <= opt.low if opt.open_low else value < opt.low)
    above = opt.high is not None and (value >= opt.high if opt.open_high else value > opt.high)
    if below or above:
        raise UserError(f"{opt.flag} must be {kind} in {opt.bounds}, got {shown(value)}")
    return value


def check_integer(name: str, value: Any, low: int, high: int) -> None:
    """:func:`check` for an argument that must be set (``check`` lets an unset option's None
    through)."""
    if value is None:
        raise UserError(f"{name} must be an integer, got None")
    check(Option(name, "", int, low, high), value)


def parse(opt: Option, text: str) -> Any:
    """The value of ``opt`` written as ``text`` on a command line (UserError if refused)."""
    if issubclass(opt.type, enum.Enum):
        values = [m.value for m in opt.type]
        if text not in values:
            raise UserError(f"{opt.flag} must be one of {', '.join(values)}, got {shown(text)}")
        return opt.type(text)
    if opt.type is str:
        if not text.strip():        # a directory named " " is legal, and never meant
            raise UserError(f"{opt.flag} must not be empty or blank")
        return text
    try:
        value = opt.type(text)
    except ValueError:
        kind = "an integer" if opt.type is int else "a number"
        raise UserError(f"{opt.flag} must be {kind}, got {shown(text)}") from None
    return check(opt, value)


def declared(cls: type, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Option, Any]]:
    """``(field path, option, default)`` of every option field of ``cls`` and of the config
    dataclasses nested in it (by their default), in declaration order."""
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            yield path + (f.name,), f.metadata["option"], f.default
        elif dataclasses.is_dataclass(f.default):
            yield from declared(type(f.default), path + (f.name,))


def with_values(cfg: Any, values: dict[tuple[str, ...], Any]) -> Any:
    """``cfg`` with the fields at the given paths replaced (nested configs rebuilt)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for path, v in values.items():
        if len(path) == 1:
            top[path[0]] = v
        else:
            nested.setdefault(path[0], {})[path[1:]] = v
    for name, sub in nested.items():
        top[name] = with_values(getattr(cfg, name), sub)
    return dataclasses.replace(cfg, **top)


def check_options(cfg: Any) -> None:
    """Check every option field of ``cfg`` (and of its nested configs) against its bounds."""
    for path, opt, _ in declared(type(cfg)):
        value = cfg
        for name in path:
            value = getattr(value, name)
        check(opt, value)


MISSING = object()


def differences(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every setting where two recorded configs
    (nested dicts of plain values) differ; :data:`MISSING` where one of them lacks the key."""
    da, db = isinstance(a, dict), isinstance(b, dict)
    # A section one side lacks is compared setting by setting (an empty one as a whole).
    if (da and db) or (da and a and b is MISSING) or (db and b and a is MISSING):
        a, b = (a if da else {}), (b if db else {})
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(a.keys() | b.keys(), key=str):
            out += differences(a.get(k, MISSING), b.get(k, MISSING),
                               f"{key}.{k}" if key else str(k))
        return out
    return [] if a == b else [(key, a, b)]

