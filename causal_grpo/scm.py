"""Linear-Gaussian structural causal models (SCMs) as JAX pytrees.

The one convention of this package: ``adj[i, j] = 1`` means the edge ``i -> j``, and
``weights[i, j]`` is the coefficient of ``X_i`` in the structural equation of ``X_j``::

    X_j = sum_i weights[i, j] * X_i + noise_std[j] * eps_j,      eps_j ~ N(0, 1).

Variables are indexed ``0..d-1`` in the order the SCM specification lists them; names are
carried beside the arrays (in :class:`SCMSpec`) for display only.

Shapes are fixed under ``jit``: an SCM may be padded to ``d_pad`` variables, the padding
variables having ``var_mask = False``, no edges, and unit noise. Every consumer (surrogates,
metrics, selectors) ignores padding variables, so SCMs of different sizes can share one
compiled program and one ``vmap``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo.errors import UserError
from causal_grpo.options import is_integer

Array = jax.Array


class SCM(NamedTuple):
    """A linear-Gaussian SCM as a pytree of arrays (see module docstring for conventions).

    Attributes:
      adj: (d, d) float32 in {0, 1}; ``adj[i, j] = 1`` means i -> j.
      weights: (d, d) float32 edge coefficients, zero where ``adj == 0``.
      noise_std: (d,) float32 standard deviations of the exogenous noise (> 0).
      target: () int32 index of the target variable (never intervened on).
      var_mask: (d,) bool, False for padding variables.
      low: () float32 lower end of the intervention range.
      high: () float32 upper end of the intervention range.
    """

    adj: Array
    weights: Array
    noise_std: Array
    target: Array
    var_mask: Array
    low: Array
    high: Array

    @property
    def d(self) -> int:
        """Padded number of variables (static)."""
        return self.adj.shape[-1]

    @classmethod
    def without_graph(cls, target: Array, var_mask: Array, low: Array, high: Array) -> "SCM":
        """An SCM of the right shapes with no edges and unit noise: what a data-only selector
        may be handed (target, mask and range), so it cannot read the graph by mistake."""
        d = var_mask.shape[-1]
        return cls(jnp.zeros((d, d)), jnp.zeros((d, d)), jnp.ones((d,)), jnp.asarray(target),
                   jnp.asarray(var_mask, bool), jnp.asarray(low, jnp.float32),
                   jnp.asarray(high, jnp.float32))


class SCMError(UserError):
    """Invalid SCM specification (the message names the problem)."""


def is_dag(adj: np.ndarray) -> bool:
    """True when the directed graph ``adj`` (d, d) has no directed cycle (self-loops count)."""
    adj = np.asarray(adj) != 0
    indeg = adj.sum(axis=0).astype(int)
    frontier = [j for j in range(adj.shape[0]) if indeg[j] == 0]
    seen = 0
    while frontier:
        i = frontier.pop()
        seen += 1
        for j in np.flatnonzero(adj[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                frontier.append(int(j))
    return seen == adj.shape[0]


def topological_order(adj: np.ndarray) -> np.ndarray:
    """A topological order of ``adj`` (d, d), smallest index first among ready nodes."""
    adj = np.asarray(adj) != 0
    indeg = adj.sum(axis=0).astype(int)
    ready = sorted(j for j in range(adj.shape[0]) if indeg[j] == 0)
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in np.flatnonzero(adj[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(int(j))
        ready.sort()
    if len(order) != adj.shape[0]:
        raise SCMError("graph has a directed cycle")
    return np.asarray(order, dtype=np.int32)


# jax.random.normal in float32 never returns more than 5.42 standard deviations.
NOISE_TAIL = 6.0
# Largest |value| a simulation may reach. Sufficient statistics sum squares of values over
# the buffer's rows in float32 (max 3.4e38): measured, values near 1e18 still give finite
# posteriors and 1e20 overflow; 1e15 leaves room for 1e8 rows.
MAX_ABS_VALUE = 1e15
# Smaller non-zero numbers become 0 (or lose precision) in float32: an edge would vanish.
MIN_ABS_NUMBER = float(np.finfo(np.float32).tiny)
# The posterior's statistics hold squares of values: a variable of noise std 1e-20 has
# variances below float32's smallest normal number (its F1 was 0 at any data size). 1e-18
# leaves a factor 100 on the squares.
MIN_NOISE_STD = 1e-18
# The fixed floors of the regressions and standardisations (ridges, residual and variance
# floors) are sized for data of order one and would swamp a variable in small units; below this
# variance (std 0.044; the built-in SCMs' noise std is 0.1 or more) a variable is first brought
# to order one by an exact power of two (unit_scale). Above it each floor is below 0.1% of the
# variance it is added to, except the plug-in fit's ridge of 1e-3 on n rows: 1e-3 / (n var).
SMALL_VARIANCE = 2.0 ** -9

# Products of data (the simulator, sufficient statistics, regressions, edge marginals) at full
# float32 precision: on NVIDIA GPUs from Ampere on, XLA's default for a float32 matrix product
# is TF32, a 10-bit mantissa. CPUs compute float32 products in full either way.
EXACT = jax.lax.Precision.HIGHEST


def unit_scale(var: Array) -> Array:
    """Per-variable power of two that brings a variance below :data:`SMALL_VARIANCE` to order
    one (divide the values by it); 1 elsewhere and at 0. Exact, so a variable above the bound
    is left bit for bit as it was, and one below it gives the numbers the same variable in
    other units gives."""
    e = jnp.round(0.5 * jnp.log2(jnp.maximum(var, MIN_ABS_NUMBER))).astype(jnp.int32)
    return jnp.where((var > 0) & (var < SMALL_VARIANCE), jnp.ldexp(jnp.float32(1.0), e), 1.0)


def column_moments(values: Array, valid: Array) -> tuple[Array, Array]:
    """(d,) mean and (population) variance of each column over the valid rows of (C, d)."""
    v = valid.astype(jnp.float32)[:, None]
    n = jnp.maximum(v.sum(), 1.0)
    mean = (values * v).sum(0) / n
    return mean, (((values - mean) ** 2) * v).sum(0) / n


def value_bounds(weights: np.ndarray, noise_std: np.ndarray,
                 intervention_range: tuple[float, float]) -> np.ndarray:
    """Bound on |X_j| reachable in simulation, under any interventions in the range: (d,).

    Propagates ``b_j = max(r, tail * noise_j + sum_i |w_ij| b_i)`` in topological order, with
    ``r`` the largest |intervention value|; nothing is simulated. ``weights`` must be a DAG.
    """
    w = np.abs(np.asarray(weights, np.float64))
    s = np.asarray(noise_std, np.float64)
    r = max(abs(float(x)) for x in intervention_range)
    b = np.zeros(len(s))
    with np.errstate(over="ignore", invalid="ignore"):
        for j in topological_order(w != 0):
            b[j] = max(r, NOISE_TAIL * s[j] + float(w[:, j] @ b))
    return b


def _check_float32_magnitudes(spec: "SCMSpec") -> None:
    """Refuse numbers a float32 simulation cannot carry (before anything is simulated)."""
    v, w, s = spec.variables, spec.weights, spec.noise_std
    tiny = np.argwhere((w != 0) & (np.abs(w) < MIN_ABS_NUMBER))
    if len(tiny):
        i, j = tiny[0]
        raise SCMError(f"SCM '{spec.name}': coefficient {w[i, j]:g} of edge {v[i]}->{v[j]} is "
                       f"below float32's smallest normal number {MIN_ABS_NUMBER:.3g}")
    if np.any(s < MIN_NOISE_STD):
        j = int(np.argmax(s < MIN_NOISE_STD))
        raise SCMError(f"SCM '{spec.name}': noise_std {s[j]:g} of {v[j]} is below "
                       f"{MIN_NOISE_STD:g}: the posterior's statistics hold squares of values, "
                       f"which would leave float32's range; rescale the SCM")
    bounds = value_bounds(w, s, spec.intervention_range)
    # The first variable in causal order that exceeds the bound is where the growth starts.
    over = [j for j in topological_order(w != 0) if not bounds[j] <= MAX_ABS_VALUE]
    if over:
        j = over[0]
        raise SCMError(
            f"SCM '{spec.name}': variable {v[j]} could reach |{v[j]}| = {bounds[j]:.3g} in "
            f"simulation (bound from noise_std, edge coefficients and intervention_range along "
            f"its paths), above the float32-safe {MAX_ABS_VALUE:g}; rescale the SCM")
    # Within the bound, so the ends cast to float32 without overflow.
    lo, hi = np.float32(spec.intervention_range[0]), np.float32(spec.intervention_range[1])
    if not lo < hi:
        raise SCMError(f"SCM '{spec.name}': intervention_range {list(spec.intervention_range)} "
                       f"has the same ends in float32")
    # Each number itself too: the bound along paths stays small for a large coefficient on a
    # parent held tiny (1e20 on a noise std of 1e-18).
    big = np.argwhere(np.abs(w) > MAX_ABS_VALUE)
    if len(big):
        i, j = big[0]
        raise SCMError(f"SCM '{spec.name}': coefficient {w[i, j]:g} of edge {v[i]}->{v[j]} is "
                       f"above the float32-safe {MAX_ABS_VALUE:g}; rescale the SCM")


@dataclasses.dataclass(frozen=True, eq=False)
class SCMSpec:
    """A named, validated linear-Gaussian SCM on the host (NumPy); ``to_scm`` makes the pytree.

    Attributes:
      name: display name (also used in result file names).
      variables: variable names in index order.
      target: index of the target variable.
      weights: (d, d) edge coefficients, ``weights[i, j] != 0`` means i -> j.
      noise_std: (d,) noise standard deviations.
      intervention_range: (low, high) of allowed intervention values.
    """

    name: str
    variables: tuple[str, ...]
    target: int
    weights: np.ndarray
    noise_std: np.ndarray
    intervention_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        s = np.asarray(self.noise_std, dtype=np.float64)
        d = len(self.variables)
        if d < 2:
            raise SCMError(f"SCM '{self.name}' needs at least 2 variables, got {d}")
        if len(set(self.variables)) != d:
            dup = sorted({v for v in self.variables if self.variables.count(v) > 1})
            raise SCMError(f"SCM '{self.name}': duplicate variable name(s) {dup}")
        if w.shape != (d, d):
            raise SCMError(f"SCM '{self.name}': weights must be {d}x{d}, got {w.shape}")
        if s.shape != (d,):
            raise SCMError(f"SCM '{self.name}': noise_std must have {d} entries, got {s.shape}")
        if not np.all(np.isfinite(w)):
            raise SCMError(f"SCM '{self.name}': edge coefficients must be finite numbers")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            bad = [self.variables[i] for i in np.flatnonzero(~(np.isfinite(s) & (s > 0)))]
            raise SCMError(f"SCM '{self.name}': noise_std must be finite and > 0 (bad for {bad})")
        if not is_integer(self.target):
            # int() would have turned 1.5, True and "1" into variable 1
            raise SCMError(f"SCM '{self.name}': target must be an integer variable index, got "
                           f"{repr(self.target)[:40]}")
        if not 0 <= self.target < d:
            raise SCMError(f"SCM '{self.name}': target index {self.target} out of range")
        if np.any(np.diag(w) != 0) or not is_dag(w != 0):
            raise SCMError(f"SCM '{self.name}': the edges form a directed cycle")
        lo, hi = (float(x) for x in self.intervention_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise SCMError(
                f"SCM '{self.name}': intervention_range must be finite with low < high, "
                f"got {self.intervention_range}"
            )
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "noise_std", s)
        object.__setattr__(self, "target", int(self.target))
        object.__setattr__(self, "variables", tuple(self.variables))
        object.__setattr__(self, "intervention_range", (lo, hi))
        _check_float32_magnitudes(self)

    @property
    def d(self) -> int:
        return len(self.variables)

    @property
    def adj(self) -> np.ndarray:
        """(d, d) int8 adjacency, ``adj[i, j] = 1`` means i -> j."""
        return (self.weights != 0).astype(np.int8)

    @property
    def target_parents(self) -> np.ndarray:
        """Indices of the target's true parents, ascending."""
        return np.flatnonzero(self.adj[:, self.target])

    def to_scm(self, d_pad: int | None = None) -> SCM:
        """The SCM pytree, padded with isolated unit-noise variables to ``d_pad`` if given."""
        d = self.d
        d_pad = d if d_pad is None else int(d_pad)
        if d_pad < d:
            raise SCMError(f"SCM '{self.name}' has {d} variables, more than d_pad={d_pad}")
        w = np.zeros((d_pad, d_pad), np.float32)
        w[:d, :d] = self.weights
        s = np.ones((d_pad,), np.float32)
        s[:d] = self.noise_std
        m = np.zeros((d_pad,), bool)
        m[:d] = True
        lo, hi = self.intervention_range
        return SCM(
            adj=jnp.asarray((w != 0).astype(np.float32)),
            weights=jnp.asarray(w),
            noise_std=jnp.asarray(s),
            target=jnp.asarray(self.target, jnp.int32),
            var_mask=jnp.asarray(m),
            low=jnp.asarray(lo, jnp.float32),
            high=jnp.asarray(hi, jnp.float32),
        )

    def to_dict(self) -> dict:
        """The custom-SCM JSON form (see ``scm_families.load_scm_json``)."""
        v = self.variables
        edges = [
            [v[i], v[j], float(self.weights[i, j])]
            for i in range(self.d)
            for j in range(self.d)
            if self.weights[i, j] != 0
        ]
        return {
            "name": self.name,
            "variables": list(v),
            "target": v[self.target],
            "edges": edges,
            "noise_std": {name: float(s) for name, s in zip(v, self.noise_std)},
            "intervention_range": list(self.intervention_range),
        }


def stack_scms(scms: Sequence[SCM]) -> SCM:
    """Stack SCM pytrees of equal padded size along a new leading axis (for ``vmap``)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *scms)


def propagate(scm: SCM, eps: Array, do_mask: Array, do_values: Array) -> Array:
    """Values of all variables for exogenous noise ``eps`` under ``do(X_S = v)``.

    Args:
      scm: the SCM.
      eps: (d,) standard-normal exogenous noise.
      do_mask: (d,) bool, True for intervened variables.
      do_values: (d,) values for intervened variables (ignored elsewhere).

    Returns:
      (d,) sample. Intervened variables lose their incoming edges (perfect intervention).
    """
    do_mask = do_mask.astype(bool)
    w = scm.weights * (~do_mask)[None, :].astype(scm.weights.dtype)
    base = jnp.where(do_mask, do_values, scm.noise_std * eps)
    # A DAG's weight matrix is nilpotent, so d fixed-point sweeps are exact; this stays a
    # handful of small matvecs instead of a LAPACK solve per sample.
    x = jax.lax.fori_loop(0, scm.d, lambda _, x: jnp.matmul(x, w, precision=EXACT) + base,
                          base)
    return x


def sample(key: Array, scm: SCM, do_mask: Array | None = None, do_values: Array | None = None) -> Array:
    """One sample (d,) from the SCM, observational or under ``do(X_S = v)``."""
    d = scm.d
    if do_mask is None:
        do_mask = jnp.zeros((d,), bool)
    if do_values is None:
        do_values = jnp.zeros((d,), jnp.float32)
    eps = jax.random.normal(key, (d,), jnp.float32)
    return propagate(scm, eps, do_mask, do_values)


def sample_n(key: Array, scm: SCM, n: int, do_mask: Array | None = None,
             do_values: Array | None = None) -> Array:
    """``n`` i.i.d. samples (n, d) under the same (possibly empty) intervention."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: sample(k, scm, do_mask, do_values))(keys)


def single_do(d: int, variable: Array, value: Array) -> tuple[Array, Array]:
    """(do_mask, do_values) of shape (d,) for ``do(X_variable = value)``."""
    mask = jnp.arange(d) == variable
    return mask, jnp.where(mask, value, 0.0).astype(jnp.float32)
