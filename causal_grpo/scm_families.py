"""SCM families: the three fixed demo SCMs, random generators, and custom-SCM JSON files.

* ``easy``, ``medium``, ``hard``: the demo SCMs of the original design (see README), fixed.
* Random families (``er``, ``sf``, ``chain``, ``fork``, ``collider``, ``mixed``, ``dense``):
  pure JAX generators ``key -> SCM`` with static shapes, so Phase 1 can draw a fresh SCM per
  episode inside ``jit``/``vmap``. Named on the command line as ``er10``, ``sf15``, ``chain5``,
  ``mixed8``, ``dense10`` ... (family + number of variables).
* ``dense<d>`` is the amortized-design literature's linear-Gaussian protocol (CAASL, Annadani
  et al. 2024): its own laws for edges, weights and noise, and its own episode defaults
  (:data:`DENSE_PROTOCOL`: 50 observational samples, 10 interventions with values in [-1, 1]).
* Custom SCM JSON files, accepted wherever a family name is::

    {"name": str, "variables": [str, ...], "target": str,
     "edges": [[parent, child, coef], ...],
     "noise_std": float | {var: float}, "intervention_range": [lo, hi]}   # last one optional

"Expected degree" is the graph-theoretic one: the mean number of neighbours (parents plus
children) of a variable, so an ER graph on d variables has edge probability
``expected_degree / (d - 1)`` and about ``d * expected_degree / 2`` edges. A scale-free graph
only approaches that (see :func:`_sf_adj`): every variable but its first has at least one
parent and at most as many as come before it, so below degree 2 it is a tree (d - 1 edges) and
at small d it has fewer edges (sf10 at the default degree 2-3: 11.0 on average, not 12.5).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import os
import re
import reprlib
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from causal_grpo import io
from causal_grpo.scm import SCM, SCMError, SCMSpec

Array = jax.Array


# --------------------------------------------------------------------------- fixed SCMs

def _fixed(name: str, variables: str, edges: list[tuple[str, str, float]],
           noise: dict[str, float] | float, target: str) -> SCMSpec:
    names = tuple(variables)
    idx = {v: i for i, v in enumerate(names)}
    w = np.zeros((len(names), len(names)))
    for p, c, coef in edges:
        w[idx[p], idx[c]] = coef
    if isinstance(noise, dict):
        s = np.array([noise.get(v, noise["*"]) for v in names], float)
    else:
        s = np.full(len(names), float(noise))
    return SCMSpec(name=name, variables=names, target=idx[target], weights=w, noise_std=s)


def easy() -> SCMSpec:
    """5 variables A..E; target D with parents B, C; noise std 0.1."""
    return _fixed("easy", "ABCDE",
                  [("A", "B", 1.5), ("E", "C", 2.0), ("B", "D", 1.2), ("C", "D", 0.8)],
                  0.1, "D")


def medium() -> SCMSpec:
    """8 variables A..H; target F with parents D, G; noise std 0.1."""
    return _fixed("medium", "ABCDEFGH",
                  [("A", "B", 1.2), ("E", "C", 1.8), ("A", "C", 0.5), ("B", "D", 0.7),
                   ("C", "D", 0.6), ("H", "G", 1.4), ("D", "F", 0.8), ("G", "F", 0.9)],
                  0.1, "F")


def hard() -> SCMSpec:
    """10 variables A..J, weak edges; target J with parents H, I; noise std 1.5/2.0/0.2."""
    return _fixed("hard", "ABCDEFGHIJ",
                  [("A", "B", 0.4), ("A", "C", 0.3), ("D", "C", 0.4), ("D", "G", 0.3),
                   ("B", "E", 0.5), ("C", "F", 0.4), ("E", "H", 0.4), ("F", "I", 0.3),
                   ("H", "J", 0.3), ("I", "J", 0.4)],
                  {"A": 1.5, "D": 1.5, "J": 0.2, "*": 2.0}, "J")


FIXED_SCMS = {"easy": easy, "medium": medium, "hard": hard}


# --------------------------------------------------------------------------- random families

class GraphKind(enum.Enum):
    ER = "er"
    SCALE_FREE = "sf"
    CHAIN = "chain"
    FORK = "fork"
    COLLIDER = "collider"
    MIXED = "mixed"
    DENSE = "dense"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Episode defaults that belong to a family (the setting its literature evaluates in).

    Attributes:
      n_observational: observational samples before the first intervention.
      n_interventions: single-sample interventions.
      intervention_range: allowed intervention values.
      all_parent_sets_max_d: up to this many variables the exact posterior scores every parent
        set (max in-degree d - 1): the family's graphs have in-degrees well beyond 3.
    """

    n_observational: int
    n_interventions: int
    intervention_range: tuple[float, float]
    all_parent_sets_max_d: int


DENSE_PROTOCOL = Protocol(n_observational=50, n_interventions=10,
                          intervention_range=(-1.0, 1.0), all_parent_sets_max_d=10)
PROTOCOLS = {GraphKind.DENSE: DENSE_PROTOCOL}


@dataclasses.dataclass(frozen=True)
class FamilyConfig:
    """A random SCM family; ``d`` and ``d_pad`` set shapes (static), the rest are ranges.

    Attributes:
      kind: graph shape. ``DENSE`` has fixed laws of its own (see :func:`dense_edge_prob`) and
        ignores ``expected_degree``, ``weight_range`` and ``noise_range``.
      d: number of real variables.
      d_pad: padded size of the generated pytree (>= d).
      expected_degree: (lo, hi): each graph draws its expected degree uniformly from it.
      weight_range: (lo, hi) of |coefficient|; the sign is random.
      noise_range: (lo, hi) of noise standard deviations.
      intervention_range: allowed intervention values.
    """

    kind: GraphKind = GraphKind.ER
    d: int = 10
    d_pad: int | None = None
    expected_degree: tuple[float, float] = (2.0, 3.0)
    weight_range: tuple[float, float] = (0.5, 2.0)
    noise_range: tuple[float, float] = (0.5, 1.5)
    intervention_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        if self.d < 3:
            raise SCMError(f"random families need d >= 3, got {self.d}")
        if self.d_pad is not None and self.d_pad < self.d:
            raise SCMError(f"d_pad={self.d_pad} is smaller than d={self.d}")
        for name in ("expected_degree", "weight_range", "noise_range", "intervention_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise SCMError(f"{name} must be a finite (lo, hi) with lo <= hi")
        if self.noise_range[0] <= 0 or self.weight_range[0] < 0:
            raise SCMError("noise_range must be > 0 and weight_range >= 0")

    @property
    def name(self) -> str:
        return f"{self.kind.value}{self.d}"

    @property
    def padded(self) -> int:
        return self.d if self.d_pad is None else self.d_pad

    @property
    def protocol(self) -> Protocol | None:
        """The family's own episode defaults, or None where the caller's apply."""
        return PROTOCOLS.get(self.kind)

    @property
    def max_indegree(self) -> int | None:
        """In-degree the exact posterior must score for this family, or None for the default."""
        p = self.protocol
        return self.d - 1 if p is not None and self.d <= p.all_parent_sets_max_d else None


def _er_adj(key: Array, d: int, degree: Array) -> Array:
    """ER DAG on d nodes in a random causal order: (d, d) float32."""
    k_perm, k_edge = jax.random.split(key)
    rank = jnp.argsort(jax.random.permutation(k_perm, d))
    p = jnp.clip(degree / (d - 1), 0.0, 1.0)
    allowed = rank[:, None] < rank[None, :]
    return (allowed & (jax.random.uniform(k_edge, (d, d)) < p)).astype(jnp.float32)


def _sf_adj(key: Array, d: int, degree: Array) -> Array:
    """Preferential-attachment DAG: each new node gets about degree/2 parents among earlier ones
    (at least 1, at most the number of earlier nodes: the module docstring's caveat)."""
    k_perm, k_att, k_m = jax.random.split(key, 3)
    # floor(degree/2) or one more: degree/2 on average before the bounds.
    half = degree / 2.0
    m_all = jnp.floor(half) + jax.random.bernoulli(k_m, half - jnp.floor(half), (d,))
    m_all = jnp.maximum(1, m_all).astype(jnp.int32)

    def add_node(j, carry):
        adj, = carry
        m = m_all[j]
        deg = adj.sum(0) + adj.sum(1)
        earlier = jnp.arange(d) < j
        logits = jnp.where(earlier, jnp.log1p(deg), -jnp.inf)
        g = jax.random.gumbel(jax.random.fold_in(k_att, j), (d,))
        score = jnp.where(earlier, logits + g, -jnp.inf)
        rank = jnp.argsort(jnp.argsort(-score))  # 0 for the best
        chosen = earlier & (rank < jnp.minimum(m, j))
        return (adj.at[:, j].set(chosen.astype(jnp.float32)),)

    (adj,) = jax.lax.fori_loop(1, d, add_node, (jnp.zeros((d, d), jnp.float32),))
    perm = jax.random.permutation(k_perm, d)
    return adj[perm][:, perm]


def _shape_adj(kind: GraphKind, key: Array, d: int) -> Array:
    """Chain / fork / collider on a random labelling (the target is drawn like every family's:
    :func:`_with_target_and_padding`)."""
    perm = jax.random.permutation(key, d)  # perm[k] is the variable at position k
    pos = jnp.arange(d)
    if kind is GraphKind.CHAIN:
        base = (pos[:, None] + 1 == pos[None, :])
    elif kind is GraphKind.FORK:
        base = (pos[:, None] == 0) & (pos[None, :] > 0)
    else:  # collider
        base = (pos[:, None] < d - 1) & (pos[None, :] == d - 1)
    inv = jnp.argsort(perm)  # position of each variable
    return base[inv][:, inv].astype(jnp.float32)


def dense_edge_prob(d: int) -> float:
    """Edge probability of ``dense<d>``: 3 expected edges per variable, min(3d / C(d, 2), 0.99)."""
    return min(3 * d / math.comb(d, 2), 0.99)


def _sample_dense(key: Array, cfg: FamilyConfig) -> SCM:
    """``dense<d>``: ER over a random order with :func:`dense_edge_prob`, weights
    N(0, 1 / in-degree of the child), noise variance InverseGamma(10, 1) per node."""
    d = cfg.d
    k_graph, k_w, k_noise, k_tgt = jax.random.split(key, 4)
    adj = _er_adj(k_graph, d, jnp.asarray(dense_edge_prob(d) * (d - 1), jnp.float32))
    indeg = jnp.maximum(adj.sum(0), 1.0)
    w = adj * jax.random.normal(k_w, (d, d)) / jnp.sqrt(indeg)[None, :]
    # InverseGamma(a, b) is b / Gamma(a, 1).
    noise = jnp.sqrt(1.0 / jax.random.gamma(k_noise, 10.0, (d,)))
    return _with_target_and_padding(adj, w, noise, k_tgt, cfg)


def _with_target_and_padding(adj: Array, w: Array, noise: Array, k_tgt: Array,
                             cfg: FamilyConfig) -> SCM:
    """The SCM pytree of a drawn (d, d) graph: target uniform among the variables with a
    parent, padded to ``cfg.padded`` (padding: no edges, unit noise, masked)."""
    d, dp = cfg.d, cfg.padded
    has_parent = adj.sum(0) > 0
    g = jax.random.gumbel(jax.random.fold_in(k_tgt, 1), (d,))
    target = jnp.argmax(jnp.where(has_parent, g, -jnp.inf)).astype(jnp.int32)
    pad = dp - d
    wp = jnp.pad(w, ((0, pad), (0, pad)))
    return SCM(
        adj=(wp != 0).astype(jnp.float32),
        weights=wp.astype(jnp.float32),
        noise_std=jnp.pad(noise, (0, pad), constant_values=1.0).astype(jnp.float32),
        target=target,
        var_mask=jnp.arange(dp) < d,
        low=jnp.asarray(cfg.intervention_range[0], jnp.float32),
        high=jnp.asarray(cfg.intervention_range[1], jnp.float32),
    )


_GRAPH_KINDS = (GraphKind.ER, GraphKind.SCALE_FREE, GraphKind.CHAIN, GraphKind.FORK,
                GraphKind.COLLIDER)


def _graph_builders(d: int, degree: Array) -> list:
    def shaped(kind):
        return lambda k: _shape_adj(kind, k, d)
    return [lambda k: _er_adj(k, d, degree), lambda k: _sf_adj(k, d, degree),
            shaped(GraphKind.CHAIN), shaped(GraphKind.FORK), shaped(GraphKind.COLLIDER)]


# Jitted once per d: called eagerly (a cell's SCM is drawn outside jit), a switch over fresh
# closures compiles anew at every call, and each compiled program keeps hundreds of memory
# mappings that a long sweep would exhaust.
@functools.partial(jax.jit, static_argnums=3)
def _mixed_adj(which: Array, key: Array, degree: Array, d: int) -> Array:
    return jax.lax.switch(which, _graph_builders(d, degree), key)


def sample_family(key: Array, cfg: FamilyConfig) -> SCM:
    """Draw one SCM from the family (pure JAX, static shapes; vmappable over keys)."""
    if cfg.kind is GraphKind.DENSE:
        return _sample_dense(key, cfg)
    d = cfg.d
    k_kind, k_graph, k_deg, k_w, k_sign, k_noise, k_tgt = jax.random.split(key, 7)
    degree = jax.random.uniform(k_deg, (), minval=cfg.expected_degree[0],
                                maxval=cfg.expected_degree[1])

    if cfg.kind is GraphKind.MIXED:
        which = jax.random.randint(k_kind, (), 0, len(_GRAPH_KINDS))
        adj = _mixed_adj(which, k_graph, degree, d)
    else:
        adj = _graph_builders(d, degree)[_GRAPH_KINDS.index(cfg.kind)](k_graph)

    # Guarantee at least one edge so the target can have a parent.
    has_edge = adj.sum() > 0
    rank = jnp.argsort(jax.random.permutation(k_tgt, d))
    fallback = ((rank[:, None] == 0) & (rank[None, :] == 1)).astype(jnp.float32)
    adj = jnp.where(has_edge, adj, fallback)

    mag = jax.random.uniform(k_w, (d, d), minval=cfg.weight_range[0], maxval=cfg.weight_range[1])
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (d, d)), 1.0, -1.0)
    w = adj * mag * sign
    noise = jax.random.uniform(k_noise, (d,), minval=cfg.noise_range[0],
                               maxval=cfg.noise_range[1])
    return _with_target_and_padding(adj, w, noise, k_tgt, cfg)


def spec_from_scm(scm: SCM, name: str) -> SCMSpec:
    """Host-side, named :class:`SCMSpec` of an (unpadded part of an) SCM pytree."""
    mask = np.asarray(scm.var_mask)
    d = int(mask.sum())
    w = np.asarray(scm.weights, np.float64)[:d, :d]
    return SCMSpec(name=name, variables=tuple(f"X{i}" for i in range(d)), target=int(scm.target),
                   weights=w, noise_std=np.asarray(scm.noise_std, np.float64)[:d],
                   intervention_range=(float(scm.low), float(scm.high)))


# --------------------------------------------------------------------------- custom JSON

# Bounds on what a file may make the loader do: read (bytes), build (names, d x d matrices).
MAX_JSON_BYTES = 32 * 2**20
# SCM names go into file names such as comparison_results_<name>.pkl (plus a temporary
# prefix) and must stay well under the usual 255-byte limit; variable names go into tables.
MAX_NAME_CHARS = 100

_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 2, 40, 40, 4, 4


def _show(x: object) -> str:
    """A short repr for messages: a hostile value cannot make a huge or deep error line."""
    return _SHOW.repr(x)


def _num(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SCMError(f"{what} must be a number, got {_show(x)}")
    try:
        x = float(x)
    except OverflowError:
        raise SCMError(f"{what} must be finite, got an integer too large for a float") from None
    if not math.isfinite(x):
        raise SCMError(f"{what} must be finite, got {x}")
    return x


def _check_name(name: object) -> str:
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS
            and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name not in (".", "..")):
        raise SCMError(f"SCM name must be 1-{MAX_NAME_CHARS} letters, digits, '_', '.', '-' "
                       f"(it is used in file names), got {_show(name)}"
                       + (f" ({len(name)} characters)" if isinstance(name, str) else ""))
    return name


def _check_size(d: int) -> None:
    # The loader and every run hold several (d, d) float64 matrices per SCM.
    need, available = 4 * 8 * d * d, io.available_memory_bytes()
    if need > available:
        raise SCMError(f"{d} variables need {io.format_bytes(need)} for the SCM's matrices "
                       f"alone; this machine has {io.format_bytes(available)} available")


def scm_from_dict(obj: object, default_name: str = "custom") -> SCMSpec:
    """Validate a custom-SCM dict (the JSON format in the module docstring)."""
    if not isinstance(obj, dict):
        raise SCMError("SCM JSON must be an object with keys name, variables, target, edges, noise_std")
    unknown = set(obj) - {"name", "variables", "target", "edges", "noise_std", "intervention_range"}
    if unknown:
        raise SCMError(f"unknown key(s) in SCM JSON: {_show(sorted(unknown, key=str))}")
    for key in ("variables", "target", "edges", "noise_std"):
        if key not in obj:
            raise SCMError(f"SCM JSON is missing '{key}'")
    name = _check_name(obj.get("name", default_name))
    variables = obj["variables"]
    if not isinstance(variables, list) or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS and v.isprintable()
            for v in variables):
        raise SCMError(f"'variables' must be a list of printable names of 1-{MAX_NAME_CHARS} "
                       "characters")
    seen: set[str] = set()
    for v in variables:
        if v in seen:
            raise SCMError(f"duplicate variable '{v}'")
        seen.add(v)
    idx = {v: i for i, v in enumerate(variables)}
    d = len(variables)
    _check_size(d)
    target = obj["target"]
    if not isinstance(target, str) or target not in idx:
        raise SCMError(f"target {_show(target)} is not one of the variables")
    edges = obj["edges"]
    if not isinstance(edges, list):
        raise SCMError("'edges' must be a list of [parent, child, coef]")
    w = np.zeros((d, d))
    for e in edges:
        if not isinstance(e, list) or len(e) != 3:
            raise SCMError(f"edge {_show(e)} must be [parent, child, coef]")
        p, c, coef = e
        for end in (p, c):
            if not isinstance(end, str) or end not in idx:
                raise SCMError(f"edge {_show(e)} names unknown variable {_show(end)}")
        if p == c:
            raise SCMError(f"edge {_show(e)} is a self-loop")
        coef = _num(coef, f"coefficient of edge {p}->{c}")
        if coef == 0:
            raise SCMError(f"edge {p}->{c} has coefficient 0 (leave the edge out instead)")
        if w[idx[p], idx[c]] != 0:
            raise SCMError(f"duplicate edge {p}->{c}")
        w[idx[p], idx[c]] = coef
    ns = obj["noise_std"]
    if isinstance(ns, dict):
        bad = set(ns) - set(idx)
        if bad:
            raise SCMError(f"noise_std names unknown variable(s) {_show(sorted(bad, key=str))}")
        missing = [v for v in variables if v not in ns]
        if missing:
            raise SCMError(f"noise_std is missing variable(s) {_show(missing)}")
        s = np.array([_num(ns[v], f"noise_std of {v}") for v in variables])
    else:
        s = np.full(d, _num(ns, "noise_std"))
    if np.any(s <= 0):
        raise SCMError("noise_std must be > 0 for every variable")
    rng = obj.get("intervention_range", [-2.0, 2.0])
    if not isinstance(rng, list) or len(rng) != 2:
        raise SCMError("intervention_range must be [lo, hi]")
    lo, hi = _num(rng[0], "intervention_range lo"), _num(rng[1], "intervention_range hi")
    if lo >= hi:
        raise SCMError(f"intervention_range must have lo < hi, got [{lo}, {hi}]")
    return SCMSpec(name=name, variables=tuple(variables), target=idx[target], weights=w,
                   noise_std=s, intervention_range=(lo, hi))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json`` object hook: a repeated key would silently override the first; refuse it."""
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise SCMError(f"duplicate key {_show(k)}")
        obj[k] = v
    return obj


def _read_json(path: str) -> object:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise SCMError(f"SCM file not found: {path}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise SCMError(f"cannot read SCM file {path}: {getattr(e, 'strerror', None) or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise SCMError(f"SCM file {path} is larger than {MAX_JSON_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SCMError(f"SCM file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                       f"offset {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise SCMError(f"SCM file {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise SCMError(f"SCM file {path} is nested too deeply to be an SCM") from None
    except SCMError as e:
        raise SCMError(f"SCM file {path}: {e}") from None
    except ValueError as e:  # an integer literal of thousands of digits
        raise SCMError(f"SCM file {path} is not valid JSON: {e}") from None


def load_scm_json(path: str) -> SCMSpec:
    """Read and validate a custom-SCM JSON file; raises :class:`SCMError` naming the problem."""
    obj = _read_json(path)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0])
    try:
        return scm_from_dict(obj, default_name=stem[:MAX_NAME_CHARS].strip(".") or "custom")
    except SCMError as e:
        raise SCMError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- resolution

# At most 9 digits: int() refuses thousands, and no family has a billion variables.
_FAMILY_RE = re.compile(r"(er|sf|chain|fork|collider|mixed|dense)(0|[1-9][0-9]{0,8})")

ScmSource = Union[SCMSpec, FamilyConfig]


def family_config(kind: GraphKind, d: int, d_pad: int | None = None, **ranges) -> FamilyConfig:
    """A family's config with its protocol's intervention range (``dense``: [-1, 1])."""
    proto = PROTOCOLS.get(kind)
    if proto is not None:
        ranges.setdefault("intervention_range", proto.intervention_range)
    return FamilyConfig(kind=kind, d=d, d_pad=d_pad, **ranges)


def resolve_scm(name: str, d_pad: int | None = None) -> ScmSource:
    """A fixed SCM (``easy``/``medium``/``hard``/JSON path) or a random family (``er10``...)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise SCMError(f"an SCM is named by a string or a path to a JSON file, got {_show(name)}")
    if name in FIXED_SCMS:
        return FIXED_SCMS[name]()
    m = _FAMILY_RE.fullmatch(name)
    if m:
        d = int(m.group(2))
        if d < 3:  # no upper limit: the posterior refuses what cannot fit in memory
            raise SCMError(f"family '{name}': number of variables must be >= 3")
        return family_config(GraphKind(m.group(1)), d, d_pad)
    if name.endswith(".json") or os.path.sep in name or os.path.exists(name):
        return load_scm_json(name)
    raise SCMError(
        f"unknown SCM {_show(name)}: use easy, medium, hard, a family such as er10/sf15/chain5/"
        "fork5/collider5/mixed8/dense10, or a path to an SCM JSON file"
    )


def instantiate(src: ScmSource, key: Array, d_pad: int | None = None) -> SCM:
    """The SCM of one cell: the fixed SCM itself, or the family's draw for ``key``."""
    if isinstance(src, SCMSpec):
        return src.to_scm(d_pad)
    cfg = src if d_pad is None else dataclasses.replace(src, d_pad=d_pad)
    return sample_family(key, cfg)
