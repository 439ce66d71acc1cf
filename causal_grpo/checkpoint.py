"""Policy checkpoints (one schema, safe loading).

A checkpoint is a directory holding

* ``policy_params.pkl``: a plain dict ``{"format": "causal-grpo-policy", "version": 1,
  "architecture": {...PolicyConfig...}, "params": {module: {name: numpy array}}}``, written
  with protocol 4 and read back *only* through :class:`SafeUnpickler`, which refuses every
  global except NumPy's array reconstruction: a pickle that would run code is rejected
  before anything in it executes;
* ``config.json``: the architecture (authoritative when loading a directory), the training
  configuration, training metrics and library versions;
* ``trainer_state.npz`` (optional): optimiser state and iteration, for resuming training.

Directories are written to a temporary sibling and renamed into place, so a checkpoint is
either complete or absent.

This module only saves and loads; ``two_phase`` holds the seed document's API and
``policy.policy_handle`` turns a loaded policy into the selector of the jitted Phase-2 loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import os
import pickle
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo.errors import UserError
from causal_grpo.features import N_FEATURES
from causal_grpo.networks import PolicyConfig, dummy_input, make_policy

FORMAT = "causal-grpo-policy"
# Inclusive bounds of every architecture field: sane sizes, so a forged config.json is refused
# before a network is built from it. lookahead_prior is a real number, the rest integers.
ARCH_BOUNDS = {"hidden": (1, 4096), "layers": (1, 64), "heads": (1, 64), "n_bins": (2, 1024),
               "n_features": (1, 1024), "lookahead": (0, 1), "lookahead_prior": (0.0, 1e3)}
VERSION = 1
PARAMS_FILE = "policy_params.pkl"
CONFIG_FILE = "config.json"
TRAINER_FILE = "trainer_state.npz"


class CheckpointError(UserError):
    """A checkpoint that cannot be used (the message names the problem)."""


# --------------------------------------------------------------------------- saving

def params_to_numpy(params: Any) -> dict:
    return {m: {k: np.asarray(v) for k, v in sub.items()} for m, sub in params.items()}


def _versions() -> dict:
    import haiku
    import optax
    return {"jax": jax.__version__, "dm-haiku": haiku.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "causal_grpo_format": VERSION}


def save_checkpoint(directory: str, params: Any, policy_cfg: PolicyConfig, training: dict,
                    metrics: dict, trainer_state: dict[str, np.ndarray] | None = None) -> str:
    """Write a complete checkpoint directory atomically (replacing an existing one)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=parent)
    try:
        blob = {"format": FORMAT, "version": VERSION,
                "architecture": dataclasses.asdict(policy_cfg), "params": params_to_numpy(params)}
        with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
            pickle.dump(blob, f, protocol=4)
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "version": VERSION,
                       "architecture": dataclasses.asdict(policy_cfg), "training": training,
                       "metrics": metrics, "versions": _versions()}, f, indent=2, sort_keys=True,
                      default=str)
        if trainer_state is not None:
            np.savez(os.path.join(tmp, TRAINER_FILE), **trainer_state)
        os.chmod(tmp, 0o755)
        old = None
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=".old-ckpt-", dir=parent)
            os.rename(directory, os.path.join(old, "x"))
        os.rename(tmp, directory)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# --------------------------------------------------------------------------- loading

class SafeUnpickler(pickle.Unpickler):
    """Unpickler for plain containers and NumPy arrays only; every other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to load {module}.{name} from a policy file "
                              "(only plain containers and numpy arrays are allowed)")


def safe_load(data: bytes, where: str) -> Any:
    try:
        return SafeUnpickler(_io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, OverflowError) as e:
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


def _check_params(params: Any, cfg: PolicyConfig, where: str) -> dict:
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"{where}: 'params' must be a dict of dicts of arrays")
    want = template_params(cfg)
    got_keys = {(m, k) for m, sub in params.items() for k in sub}
    want_keys = {(m, k) for m, sub in want.items() for k in sub}
    if got_keys != want_keys:
        missing = sorted(want_keys - got_keys)[:3]
        extra = sorted(got_keys - want_keys)[:3]
        raise CheckpointError(f"{where}: parameters do not fit the architecture in config.json "
                              f"(missing {missing}, unexpected {extra})")
    out = {}
    for m, sub in want.items():
        out[m] = {}
        for k, spec in sub.items():
            arr = params[m][k]
            if not isinstance(arr, np.ndarray) or arr.shape != spec.shape:
                shape = getattr(arr, "shape", type(arr).__name__)
                raise CheckpointError(f"{where}: parameters do not fit the architecture in "
                                      f"config.json ({m}/{k} has shape {shape}, expected {spec.shape})")
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{where}: parameter {m}/{k} has non-finite values")
            out[m][k] = jnp.asarray(arr, jnp.float32)
    return out


def load_grpo_policy(path: str) -> LoadedPolicy:
    """Load a policy from a checkpoint directory or its ``policy_params.pkl``.

    Raises :class:`CheckpointError` (one line, naming the problem) for a missing directory or
    file, a truncated or corrupt file, a pickle that would run code, or parameters that do not
    fit the architecture.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        pkl, cfg_path = os.path.join(path, PARAMS_FILE), os.path.join(path, CONFIG_FILE)
        if not os.path.exists(pkl):
            raise CheckpointError(f"no {PARAMS_FILE} in checkpoint directory {path}")
    elif os.path.exists(path):
        pkl, cfg_path = path, os.path.join(os.path.dirname(path), CONFIG_FILE)
    else:
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(pkl, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read {pkl}: {e.strerror}") from None
    blob = safe_load(data, pkl)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{pkl} is not a causal-grpo policy file")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{pkl} has format version {blob.get('version')}, this code reads {VERSION}")
    metadata: dict = {}
    arch = blob.get("architecture")
    if os.path.exists(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                metadata = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path} is unreadable or not valid JSON ({e})") from None
        if not isinstance(metadata, dict) or "architecture" not in metadata:
            raise CheckpointError(f"{cfg_path} has no 'architecture'")
        arch = metadata["architecture"]
    cfg = _architecture(arch, cfg_path if metadata else pkl)
    params = _check_params(blob.get("params"), cfg, pkl)
    return LoadedPolicy(params, cfg, os.path.abspath(path), hashlib.sha256(data).hexdigest()[:16],
                        metadata)
