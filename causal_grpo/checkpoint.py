"""Policy checkpoints (one schema, safe loading) and the seed document's policy API.

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

``load_grpo_policy(path)`` and ``create_grpo_intervention_fn(loaded, scm, intervention_range)``
are the seed document's API; ``policy_handle`` turns a loaded policy into the pure selector of
the jitted Phase-2 loop.
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

from causal_grpo.active_learning import Observation
from causal_grpo.errors import UserError
from causal_grpo.features import N_FEATURES, Buffer, features_from_probs
from causal_grpo.networks import (PolicyConfig, bin_values, dummy_input, make_policy,
                                  sample_action)
from causal_grpo.policy import (LookaheadDraws, lookahead_features, lookahead_key,
                                make_policy_selector, policy_input, resolve_lookahead_draws)
from causal_grpo.scm import SCM, SCMSpec

FORMAT = "causal-grpo-policy"
OPTIONAL_ZERO = {"pairwise", "data_stats", "lookahead", "lookahead_prior"}   # 0 means "off"
REAL_FIELDS = {"lookahead_prior"}   # architecture fields that are numbers, not integers
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
    unknown = set(obj) - set(fields)
    if unknown:
        raise CheckpointError(f"{where}: unknown architecture field(s) {sorted(unknown)}")
    # Checkpoints written before the belief-graph terms (or the data statistics) existed lack
    # those fields: they are policies without them.
    obj = {k: 0 for k in OPTIONAL_ZERO} | obj
    for k, v in obj.items():
        if k in REAL_FIELDS:
            if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                    or v < 0):
                raise CheckpointError(f"{where}: architecture field '{k}' must be a finite "
                                      "non-negative number")
            obj = obj | {k: float(v)}
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k in OPTIONAL_ZERO else 1):
            kind = "a non-negative" if k in OPTIONAL_ZERO else "a positive"
            raise CheckpointError(f"{where}: architecture field '{k}' must be {kind} integer")
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


def policy_handle(loaded: LoadedPolicy, greedy: bool = False,
                  lookahead_draws: LookaheadDraws = "auto"):
    """The loaded policy as the pure selector of the jitted Phase-2 loop (``lookahead_draws``:
    outcomes per candidate in its lookahead input, a number or "auto" (the acting-time budget,
    :func:`policy.auto_lookahead_draws`); part of the digest, so of the cache key)."""
    from causal_grpo.sweep import PolicyHandle
    try:
        resolve_lookahead_draws(lookahead_draws, 2)
    except ValueError as e:
        raise UserError(str(e)) from None
    draws = lookahead_draws if loaded.config.lookahead else 1
    digest = loaded.digest + ("-greedy" if greedy else "") + (f"-la{draws}" if draws != 1 else "")
    return PolicyHandle(make_policy_selector(loaded.config, greedy, draws), loaded.params,
                        digest, loaded.config, greedy, draws)


# --------------------------------------------------------------------------- stateful policy API

class GRPOInterventionFn:
    """A trained policy with its own history, choosing interventions from data alone.

    It keeps every sample it is shown (``observe``) and its own exact DAG posterior of them;
    each call builds the policy's input from that history (surrogate features, never the true
    graph) and samples ``(variable_index, value)``. Create it with
    :func:`create_grpo_intervention_fn`.
    """

    def __init__(self, loaded: LoadedPolicy, d: int, target: int, names: tuple[str, ...],
                 intervention_range: tuple[float, float], capacity: int = 512, seed: int = 0,
                 greedy: bool = False, lookahead_draws: LookaheadDraws = "auto"):
        from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate
        lo, hi = (float(x) for x in intervention_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise UserError(f"intervention_range must be finite with low < high, got {intervention_range}")
        if not 0 <= target < d:
            raise UserError(f"target index {target} out of range for {d} variables")
        try:
            lookahead_draws = resolve_lookahead_draws(lookahead_draws, d)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.loaded, self.d, self.target, self.names = loaded, d, target, names
        self.low, self.high, self.capacity = lo, hi, capacity
        self._sur = make_analytic_surrogate(AnalyticConfig(), d)
        self._var_mask = jnp.ones((d,), bool)
        self._state = self._sur.init(jax.random.PRNGKey(seed), self._var_mask)
        self._buffer = Buffer.empty(capacity, d)
        self._count = 0
        self._key = jax.random.PRNGKey(seed)
        self._calls = 0
        self.history: list[dict] = []
        net = make_policy(loaded.config)
        K = loaded.config.n_bins

        def _out(params, buffer, state, target, key):
            probs = self._sur.edge_probs(state)
            feats = features_from_probs(probs, buffer, target, self._var_mask)
            obs = Observation(buffer, probs, feats, target, self._var_mask, jnp.float32(lo),
                              jnp.float32(hi), jnp.asarray(0))
            extra = (lookahead_features(lookahead_key(key), obs, self._sur, state, lookahead_draws)
                     if loaded.config.lookahead else None)
            return net.apply(params, None, policy_input(obs, extra))

        def _act(params, buffer, state, target, key):
            out = _out(params, buffer, state, target, key)
            j, b, lp = sample_action(key, out, greedy)
            return j, bin_values(jnp.float32(lo), jnp.float32(hi), K)[b], lp

        def _dist(params, buffer, state, target, key):
            out = _out(params, buffer, state, target, key)
            pv = jax.nn.softmax(out.var_logits)
            return pv, jax.nn.softmax(out.value_logits, axis=-1)

        self._act = jax.jit(_act)
        self._dist = jax.jit(_dist)
        self._update = jax.jit(self._sur.update)

    def observe(self, values, intervened=None) -> None:
        """Add samples: values (n, d) or (d,); intervened the same shape (bool) or None."""
        x = np.atleast_2d(np.asarray(values, np.float32))
        if x.shape[1] != self.d or not np.all(np.isfinite(x)):
            raise UserError(f"observe() needs finite values of shape (n, {self.d}), got {np.shape(values)}")
        m = np.zeros_like(x, bool) if intervened is None else np.atleast_2d(np.asarray(intervened, bool))
        if m.shape != x.shape:
            raise UserError(f"intervened mask shape {m.shape} does not match values {x.shape}")
        n = x.shape[0]
        if self._count + n > self.capacity:
            raise UserError(f"history is full ({self.capacity} rows); create the function with a "
                            "larger capacity")
        rows = slice(self._count, self._count + n)
        self._buffer = Buffer(self._buffer.values.at[rows].set(x),
                              self._buffer.intervened.at[rows].set(m),
                              self._buffer.valid.at[rows].set(True))
        self._count += n
        self._state = self._update(self._state, jnp.asarray(x), jnp.asarray(m), jnp.ones((n,), bool))
        for row, mask in zip(x, m):
            self.history.append({"values": row, "intervened": mask})

    def action_distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """(d,) variable probabilities and (d, n_bins) value-bin probabilities of the next call."""
        pv, pb = self._dist(self.loaded.params, self._buffer, self._state, jnp.asarray(self.target),
                            jax.random.fold_in(self._key, self._calls))
        return np.asarray(pv), np.asarray(pb)

    def __call__(self) -> tuple[int, float]:
        """The next intervention ``(variable_index, value)`` chosen from the history."""
        if self._count == 0:
            raise UserError("the intervention function has seen no data yet; call observe() first")
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        j, v, _ = self._act(self.loaded.params, self._buffer, self._state,
                            jnp.asarray(self.target), key)
        return int(j), float(v)


def create_grpo_intervention_fn(loaded_policy: LoadedPolicy, scm: SCMSpec | SCM | str,
                                intervention_range: tuple[float, float] = (-2.0, 2.0),
                                seed: int = 0, greedy: bool = False,
                                capacity: int = 512,
                                lookahead_draws: LookaheadDraws = "auto") -> GRPOInterventionFn:
    """The seed document's step 2: a stateful intervention function for ``scm``.

    Only the SCM's size, target and names are used, never its graph: the function learns what
    it needs from the data it is shown. ``lookahead_draws``: as for :func:`policy_handle`.
    """
    if isinstance(scm, str):
        from causal_grpo.scm_families import resolve_scm
        scm = resolve_scm(scm)
    if isinstance(scm, SCMSpec):
        d, target, names = scm.d, scm.target, scm.variables
    elif isinstance(scm, SCM):
        mask = np.asarray(scm.var_mask)
        if not mask.all():
            raise UserError("create_grpo_intervention_fn needs an unpadded SCM")
        d, target = scm.d, int(scm.target)
        names = tuple(f"X{i}" for i in range(d))
    else:
        raise UserError(f"scm must be an SCMSpec, an SCM or a name, got {type(scm).__name__}")
    return GRPOInterventionFn(loaded_policy, d, target, names, intervention_range,
                              capacity=capacity, seed=seed, greedy=greedy,
                              lookahead_draws=lookahead_draws)
