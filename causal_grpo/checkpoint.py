"""Policy checkpoints: save and load, nothing else; loading cannot run code or crash.

A checkpoint is a directory holding

* ``policy_params.pkl`` (format version 2): a pickle of plain builtins only (dict, list, str,
  int, float, bytes): ``{"format": "causal-grpo-policy", "version": 2, "architecture":
  {...PolicyConfig...}, "params": {module: {name: {"dtype": str, "shape": [int, ...],
  "data": bytes}}}}``. It is read back through :class:`PlainUnpickler`, which refuses every
  global (no numpy, no callables), so a pickle that would run code or forge an object is
  rejected before anything in it executes; then every array is checked (dtype from an
  allow-list, shape against the architecture's, data length against dtype and shape) before
  it is decoded. Version-1 files (numpy pickles) are refused, not migrated: reading them
  needs numpy's reconstruction globals, the unsafe path; commit 465dede reads them.
* ``config.json``: the architecture (authoritative when loading a directory, each field within
  sane bounds), the training configuration, training metrics and library versions;
* ``trainer_state.npz`` (optional): optimiser state and iteration, for resuming training
  (numpy's loader without pickles).

Directories are written to a temporary sibling and renamed into place, so a checkpoint is
either complete or absent. ``two_phase`` holds the seed document's API and
``policy.policy_handle`` turns a loaded policy into the selector of the jitted Phase-2 loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import math
import os
import pickle
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo import io
from causal_grpo.errors import UserError
from causal_grpo.features import N_FEATURES
from causal_grpo.networks import PolicyConfig, dummy_input, make_policy

FORMAT = "causal-grpo-policy"
# Inclusive bounds of every architecture field: sane sizes, so a forged config.json is refused
# before a network is built from it. lookahead_prior is a real number, the rest integers.
ARCH_BOUNDS = {"hidden": (1, 4096), "layers": (1, 64), "heads": (1, 64), "n_bins": (2, 1024),
               "n_features": (1, 1024), "lookahead": (0, 1), "lookahead_prior": (0.0, 1e3)}
VERSION = 2
OLD_FORMAT_COMMIT = "465dede"   # the last commit that reads format version 1
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
          "uint16", "uint32", "uint64", "bool")
MAX_ELEMENTS = 2 ** 28          # per array; a real policy has about 10^5 in all
MAX_FILE_BYTES = 2 ** 30
MAX_CONFIG_BYTES = 2 ** 24
PARAMS_FILE = "policy_params.pkl"
CONFIG_FILE = "config.json"
TRAINER_FILE = "trainer_state.npz"


class CheckpointError(UserError):
    """A checkpoint that cannot be used (the message names the problem)."""


# --------------------------------------------------------------------------- saving

def _encode(x: Any) -> dict:
    """An array as plain builtins: dtype name, shape, little-endian bytes."""
    a = np.asarray(x)
    if a.dtype.name not in DTYPES:
        raise TypeError(f"cannot save a {a.dtype} array in a policy file")
    return {"dtype": a.dtype.name, "shape": list(a.shape),
            "data": np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()}


def versions() -> dict:
    """What computed a checkpoint: the libraries' releases and ``library``, the digest of this
    project's code (:func:`causal_grpo.version.library_id`)."""
    import haiku
    import jaxlib
    import optax

    from causal_grpo.version import library_id
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "dm-haiku": haiku.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "causal_grpo_format": VERSION,
            "library": library_id()}


def _fsync(path: str) -> None:
    """Flush a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str, params: Any, policy_cfg: PolicyConfig, training: dict,
                    metrics: dict, trainer_state: dict[str, np.ndarray] | None = None) -> str:
    """Write a complete checkpoint directory atomically (replacing an existing one)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=io.CKPT_TMP_PREFIX, dir=parent)
    try:
        blob = {"format": FORMAT, "version": VERSION,
                "architecture": dataclasses.asdict(policy_cfg),
                "params": {m: {k: _encode(v) for k, v in sub.items()} for m, sub in params.items()}}
        with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
            pickle.dump(blob, f, protocol=4)
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "version": VERSION,
                       "architecture": dataclasses.asdict(policy_cfg), "training": training,
                       "metrics": metrics, "versions": versions()}, f, indent=2, sort_keys=True,
                      default=str)
        if trainer_state is not None:
            np.savez(os.path.join(tmp, TRAINER_FILE), **trainer_state)
        os.chmod(tmp, 0o755)
        # On disk before the rename makes them the checkpoint: after a power loss a
        # checkpoint is complete or absent, never present with empty files.
        for name in os.listdir(tmp):
            _fsync(os.path.join(tmp, name))
        _fsync(tmp)
        old = None
        # Ctrl-C waits for the swap; a kill -9 between its renames leaves the old checkpoint
        # aside under its own name, which io.drop_stale_partials puts back.
        with io.signals_held():
            if os.path.exists(directory):
                old = tempfile.mkdtemp(prefix=io.CKPT_OLD_PREFIX, dir=parent)
                os.rename(directory, os.path.join(old, os.path.basename(directory)))
            os.rename(tmp, directory)
        _fsync(parent)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# --------------------------------------------------------------------------- loading

class PlainUnpickler(pickle.Unpickler):
    """Unpickler of plain builtins only: every global is refused, so no callable (and no
    object but dict, list, tuple, str, bytes, int, float, bool, None) can be built."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy":
            raise CheckpointError(f"holds numpy objects ({module}.{name}): a policy file of "
                                  f"format version 1, read by commit {OLD_FORMAT_COMMIT}; this "
                                  f"code reads version {VERSION} only")
        raise CheckpointError(f"refusing to load {module}.{name} from a policy file "
                              "(only plain builtins are allowed)")


def plain_load(data: bytes, where: str) -> Any:
    """Unpickle ``data`` with :class:`PlainUnpickler`; any failure is one CheckpointError."""
    try:
        return PlainUnpickler(_io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{where} is truncated or corrupt ({type(e).__name__})") from None


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedPolicy:
    """A policy read from a checkpoint: its parameters, architecture and provenance."""

    params: Any
    config: PolicyConfig
    path: str
    digest: str
    metadata: dict


def _architecture(obj: Any, where: str) -> PolicyConfig:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: 'architecture' must be an object")
    fields = {f.name: f.type for f in dataclasses.fields(PolicyConfig)}
    if set(obj) != set(fields):
        raise CheckpointError(f"{where}: architecture fields {sorted(map(str, obj))} are not "
                              f"this version's {sorted(fields)}"[:400])
    for k, v in obj.items():
        lo, hi = ARCH_BOUNDS[k]
        real = isinstance(lo, float)
        if (isinstance(v, bool) or not isinstance(v, (int, float) if real else int)
                or not lo <= v <= hi):
            kind = "a number" if real else "an integer"
            raise CheckpointError(f"{where}: architecture field '{k}' must be {kind} in "
                                  f"[{lo}, {hi}], got {v!r}"[:300])
    obj = obj | {"lookahead_prior": float(obj["lookahead_prior"])}
    cfg = PolicyConfig(**obj)
    if cfg.n_features != N_FEATURES:
        raise CheckpointError(f"{where}: policy expects {cfg.n_features} features, this version "
                              f"computes {N_FEATURES}")
    if cfg.hidden % cfg.heads:
        raise CheckpointError(f"{where}: hidden={cfg.hidden} is not divisible by heads={cfg.heads}")
    return cfg


def template_params(cfg: PolicyConfig) -> Any:
    return jax.eval_shape(lambda: make_policy(cfg).init(jax.random.PRNGKey(0), dummy_input(cfg)))


def _decode(obj: Any, shape: tuple[int, ...], name: str, where: str) -> np.ndarray:
    """The array ``name`` from its plain form, after checking it against the template shape."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise CheckpointError(f"{where}: parameter {name} is not a {{dtype, shape, data}} record")
    dtype, dims, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: parameter {name} has dtype {str(dtype)[:40]!r}, not one "
                              f"of {', '.join(DTYPES)}")
    if (not isinstance(dims, list) or len(dims) > 32
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in dims)):
        raise CheckpointError(f"{where}: parameter {name} has a shape that is not a list of "
                              "non-negative integers")
    size = math.prod(dims)
    if size > MAX_ELEMENTS:
        raise CheckpointError(f"{where}: parameter {name} claims {size:.3g} elements "
                              f"(at most {MAX_ELEMENTS})")
    if tuple(dims) != shape:
        raise CheckpointError(f"{where}: parameters do not fit the architecture in config.json "
                              f"({name} has shape {tuple(dims)}, expected {shape})")
    dt = np.dtype(dtype).newbyteorder("<")
    if not isinstance(data, bytes) or len(data) != size * dt.itemsize:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise CheckpointError(f"{where}: parameter {name} has {got} bytes of data, its dtype and "
                              f"shape need {size * dt.itemsize}")
    arr = np.frombuffer(data, dt).reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{where}: parameter {name} has non-finite values")
    return arr


def _check_params(params: Any, cfg: PolicyConfig, where: str) -> dict:
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"{where}: 'params' must be a dict of dicts of arrays")
    want = template_params(cfg)
    got_keys = {(m, k) for m, sub in params.items() for k in sub}
    want_keys = {(m, k) for m, sub in want.items() for k in sub}
    if got_keys != want_keys:
        missing = sorted(want_keys - got_keys)[:3]
        extra = sorted(map(str, got_keys - want_keys))[:3]
        raise CheckpointError(f"{where}: parameters do not fit the architecture in config.json "
                              f"(missing {missing}, unexpected {extra})"[:400])
    return {m: {k: jnp.asarray(_decode(params[m][k], spec.shape, f"{m}/{k}", where), jnp.float32)
                for k, spec in sub.items()} for m, sub in want.items()}


def _read(path: str, limit: int) -> bytes:
    try:
        if os.path.getsize(path) > limit:
            raise CheckpointError(f"{path} is larger than {limit} bytes: not a policy checkpoint")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None


def read_config(path: str) -> dict:
    """``config.json`` as a dict; one CheckpointError if it is not UTF-8 JSON of an object."""
    try:
        obj = json.loads(_read(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint config") from None
    except ValueError as e:   # JSONDecodeError, or an integer with too many digits
        raise CheckpointError(f"{path} is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(obj, dict) or "architecture" not in obj:
        raise CheckpointError(f"{path} has no 'architecture'")
    _check_version(obj.get("version", VERSION), path)
    return obj


def _check_version(version: object, where: str) -> None:
    if type(version) is not int:   # "2", 2.0, true, none: not what this code writes
        raise CheckpointError(f"{where}: the format version must be a whole number, got "
                              f"{repr(version)[:20]}")
    if version != VERSION:
        raise CheckpointError(f"{where} has format version {str(version)[:20]}; this code reads "
                              f"version {VERSION} (version 1 is read by commit "
                              f"{OLD_FORMAT_COMMIT})")


def load_grpo_policy(path: str) -> LoadedPolicy:
    """Load a policy from a checkpoint directory, its ``policy_params.pkl``, or a Phase-1
    output directory (its ``final/``).

    Raises :class:`CheckpointError` (one line, naming the problem) for a missing directory or
    file, a truncated or corrupt file, a pickle that holds anything but plain builtins, an
    older format, a config.json that is not UTF-8 JSON or whose architecture is out of bounds,
    or parameters that do not fit the architecture.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise CheckpointError(f"load_grpo_policy needs a path (str or os.PathLike), got "
                              f"{type(path).__name__}")
    path = os.fspath(path)
    if (os.path.isdir(path) and not os.path.exists(os.path.join(path, PARAMS_FILE))
            and os.path.exists(os.path.join(path, "final", PARAMS_FILE))):
        path = os.path.join(path, "final")     # a Phase-1 output directory: its trained policy
    if os.path.isdir(path):
        pkl, cfg_path = os.path.join(path, PARAMS_FILE), os.path.join(path, CONFIG_FILE)
        if not os.path.exists(pkl):
            raise CheckpointError(f"no {PARAMS_FILE} in checkpoint directory {path} (nor in "
                                  f"its final/: a Phase-1 run that has not finished?)")
    elif os.path.exists(path):
        pkl, cfg_path = path, os.path.join(os.path.dirname(path), CONFIG_FILE)
    else:
        raise CheckpointError(f"checkpoint not found: {path}")
    metadata = read_config(cfg_path) if os.path.exists(cfg_path) else {}
    data = _read(pkl, MAX_FILE_BYTES)
    blob = plain_load(data, pkl)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{pkl} is not a causal-grpo policy file")
    _check_version(blob.get("version"), pkl)
    arch = metadata["architecture"] if metadata else blob.get("architecture")
    cfg = _architecture(arch, cfg_path if metadata else pkl)
    params = _check_params(blob.get("params"), cfg, pkl)
    return LoadedPolicy(params, cfg, os.path.abspath(path), hashlib.sha256(data).hexdigest()[:16],
                        metadata)
