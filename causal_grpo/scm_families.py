"""SCM families: the three fixed demo SCMs, random generators, and custom-SCM JSON files.

* ``easy``, ``medium``, ``hard``: the demo SCMs of the original design (see README), fixed.
* Random families (``er``, ``sf``, ``chain``, ``fork``, ``collider``, ``mixed``): pure JAX
  generators ``key -> SCM`` with static shapes, so Phase 1 can draw a fresh SCM per episode
  inside ``jit``/``vmap``. Named on the command line as ``er10``, ``sf15``, ``chain5``,
  ``mixed8`` ... (family + number of variables).
* Custom SCM JSON files, accepted wherever a family name is::

    {"name": str, "variables": [str, ...], "target": str,
     "edges": [[parent, child, coef], ...],
     "noise_std": float | {var: float}, "intervention_range": [lo, hi]}   # last one optional

"Expected degree" is the graph-theoretic one: the mean number of neighbours (parents plus
children) of a variable, so an ER graph on d variables has edge probability
``expected_degree / (d - 1)`` and about ``d * expected_degree / 2`` edges.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class FamilyConfig:
    """A random SCM family; ``d`` and ``d_pad`` set shapes (static), the rest are ranges.

    Attributes:
      kind: graph shape.
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


def _er_adj(key: Array, d: int, degree: Array) -> Array:
    """ER DAG on d nodes in a random causal order: (d, d) float32."""
    k_perm, k_edge = jax.random.split(key)
    rank = jnp.argsort(jax.random.permutation(k_perm, d))
    p = jnp.clip(degree / (d - 1), 0.0, 1.0)
    allowed = rank[:, None] < rank[None, :]
    return (allowed & (jax.random.uniform(k_edge, (d, d)) < p)).astype(jnp.float32)


def _sf_adj(key: Array, d: int, degree: Array) -> Array:
    """Preferential-attachment DAG: each new node gets about degree/2 parents among earlier ones."""
    k_perm, k_att, k_m = jax.random.split(key, 3)
    # floor(degree/2) or one more, so the mean number of parents is degree/2 (not a tree).
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


def _shape_adj(kind: GraphKind, key: Array, d: int) -> tuple[Array, Array]:
    """Chain / fork / collider on a random labelling: (adj, natural target)."""
    perm = jax.random.permutation(key, d)  # perm[k] is the variable at position k
    pos = jnp.arange(d)
    if kind is GraphKind.CHAIN:
        base = (pos[:, None] + 1 == pos[None, :])
        tgt_pos = d - 1
    elif kind is GraphKind.FORK:
        base = (pos[:, None] == 0) & (pos[None, :] > 0)
        tgt_pos = d - 1
    else:  # collider
        base = (pos[:, None] < d - 1) & (pos[None, :] == d - 1)
        tgt_pos = d - 1
    inv = jnp.argsort(perm)  # position of each variable
    adj = base[inv][:, inv].astype(jnp.float32)
    return adj, perm[tgt_pos]


def sample_family(key: Array, cfg: FamilyConfig) -> SCM:
    """Draw one SCM from the family (pure JAX, static shapes; vmappable over keys)."""
    d, dp = cfg.d, cfg.padded
    k_kind, k_graph, k_deg, k_w, k_sign, k_noise, k_tgt = jax.random.split(key, 7)
    degree = jax.random.uniform(k_deg, (), minval=cfg.expected_degree[0],
                                maxval=cfg.expected_degree[1])

    def er(k):
        return _er_adj(k, d, degree)

    def sf(k):
        return _sf_adj(k, d, degree)

    def shaped(kind):
        return lambda k: _shape_adj(kind, k, d)[0]

    kinds = [GraphKind.ER, GraphKind.SCALE_FREE, GraphKind.CHAIN, GraphKind.FORK,
             GraphKind.COLLIDER]
    builders = [er, sf, shaped(GraphKind.CHAIN), shaped(GraphKind.FORK),
                shaped(GraphKind.COLLIDER)]
    if cfg.kind is GraphKind.MIXED:
        which = jax.random.randint(k_kind, (), 0, len(builders))
        adj = jax.lax.switch(which, builders, k_graph)
    else:
        adj = builders[kinds.index(cfg.kind)](k_graph)

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
    # Target: uniformly among variables with at least one parent.
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


def spec_from_scm(scm: SCM, name: str) -> SCMSpec:
    """Host-side, named :class:`SCMSpec` of an (unpadded part of an) SCM pytree."""
    mask = np.asarray(scm.var_mask)
    d = int(mask.sum())
    w = np.asarray(scm.weights, np.float64)[:d, :d]
    return SCMSpec(name=name, variables=tuple(f"X{i}" for i in range(d)), target=int(scm.target),
                   weights=w, noise_std=np.asarray(scm.noise_std, np.float64)[:d],
                   intervention_range=(float(scm.low), float(scm.high)))


# --------------------------------------------------------------------------- custom JSON

def _num(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SCMError(f"{what} must be a number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise SCMError(f"{what} must be finite, got {x}")
    return x


def scm_from_dict(obj: object, default_name: str = "custom") -> SCMSpec:
    """Validate a custom-SCM dict (the JSON format in the module docstring)."""
    if not isinstance(obj, dict):
        raise SCMError("SCM JSON must be an object with keys name, variables, target, edges, noise_std")
    unknown = set(obj) - {"name", "variables", "target", "edges", "noise_std", "intervention_range"}
    if unknown:
        raise SCMError(f"unknown key(s) in SCM JSON: {sorted(unknown)}")
    for key in ("variables", "target", "edges", "noise_std"):
        if key not in obj:
            raise SCMError(f"SCM JSON is missing '{key}'")
    name = obj.get("name", default_name)
    if not isinstance(name, str) or not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SCMError(f"SCM name must be a non-empty string of letters, digits, '_', '.', '-', got {name!r}")
    variables = obj["variables"]
    if not isinstance(variables, list) or not all(isinstance(v, str) and v for v in variables):
        raise SCMError("'variables' must be a list of non-empty strings")
    seen: set[str] = set()
    for v in variables:
        if v in seen:
            raise SCMError(f"duplicate variable '{v}'")
        seen.add(v)
    idx = {v: i for i, v in enumerate(variables)}
    d = len(variables)
    target = obj["target"]
    if not isinstance(target, str) or target not in idx:
        raise SCMError(f"target {target!r} is not one of the variables")
    edges = obj["edges"]
    if not isinstance(edges, list):
        raise SCMError("'edges' must be a list of [parent, child, coef]")
    w = np.zeros((d, d))
    for e in edges:
        if not isinstance(e, list) or len(e) != 3:
            raise SCMError(f"edge {e!r} must be [parent, child, coef]")
        p, c, coef = e
        for end in (p, c):
            if not isinstance(end, str) or end not in idx:
                raise SCMError(f"edge {e!r} names unknown variable {end!r}")
        if p == c:
            raise SCMError(f"edge {e!r} is a self-loop")
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
            raise SCMError(f"noise_std names unknown variable(s) {sorted(bad)}")
        missing = [v for v in variables if v not in ns]
        if missing:
            raise SCMError(f"noise_std is missing variable(s) {missing}")
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


def load_scm_json(path: str) -> SCMSpec:
    """Read and validate a custom-SCM JSON file; raises :class:`SCMError` naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise SCMError(f"SCM file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SCMError(f"cannot read SCM file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise SCMError(f"SCM file {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0]) or "custom"
    try:
        return scm_from_dict(obj, default_name=stem)
    except SCMError as e:
        raise SCMError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- resolution

_FAMILY_RE = re.compile(r"^(er|sf|chain|fork|collider|mixed)(\d+)$")

ScmSource = Union[SCMSpec, FamilyConfig]


def resolve_scm(name: str, d_pad: int | None = None) -> ScmSource:
    """A fixed SCM (``easy``/``medium``/``hard``/JSON path) or a random family (``er10``...)."""
    if name in FIXED_SCMS:
        return FIXED_SCMS[name]()
    m = _FAMILY_RE.match(name)
    if m:
        d = int(m.group(2))
        if d < 3:  # no upper limit: the posterior refuses what cannot fit in memory
            raise SCMError(f"family '{name}': number of variables must be >= 3")
        return FamilyConfig(kind=GraphKind(m.group(1)), d=d, d_pad=d_pad)
    if name.endswith(".json") or os.path.sep in name or os.path.exists(name):
        return load_scm_json(name)
    raise SCMError(
        f"unknown SCM '{name}': use easy, medium, hard, a family such as er10/sf15/chain5/"
        "fork5/collider5/mixed8, or a path to an SCM JSON file"
    )


def instantiate(src: ScmSource, key: Array, d_pad: int | None = None) -> SCM:
    """The SCM of one cell: the fixed SCM itself, or the family's draw for ``key``."""
    if isinstance(src, SCMSpec):
        return src.to_scm(d_pad)
    cfg = src if d_pad is None else dataclasses.replace(src, d_pad=d_pad)
    return sample_family(key, cfg)
