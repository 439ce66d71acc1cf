"""Checkpoints: round trips, refusal of unsafe/corrupt files, and the stateful policy API."""

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import checkpoint as C
from causal_grpo.active_learning import Observation
from causal_grpo.errors import UserError
from causal_grpo.features import Buffer, features_from_probs
from causal_grpo.networks import PolicyConfig
from causal_grpo.phase1 import Phase1Config, init_params
from causal_grpo.policy import make_policy_selector, policy_handle
from causal_grpo.scm_families import easy
from causal_grpo.two_phase import create_grpo_intervention_fn

# The API mechanics are tested without the lookahead (its input depends on the acting key);
# test_a_lookahead_policy_round_trips_and_reads_its_lookahead covers the default.
CFG = PolicyConfig(hidden=16, layers=1, heads=2, lookahead=0, lookahead_prior=0.0)


def random_params(seed=0):
    """Initial params with every weight perturbed, so outputs depend on the inputs."""
    params = init_params(Phase1Config(policy=CFG, seed=seed))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)


@pytest.fixture()
def ckpt(tmp_path):
    params = random_params()
    path = C.save_checkpoint(str(tmp_path / "ck"), params, CFG, {"note": "test"}, {"reward": 1.0})
    return path, params


def observation(d=5, n=12, seed=0):
    rng = np.random.default_rng(seed)
    vals = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    buf = Buffer(vals, jnp.zeros((n, d), bool), jnp.ones((n,), bool))
    probs = jnp.asarray(rng.uniform(size=(d, d)) * (1 - np.eye(d)), jnp.float32)
    mask = jnp.ones((d,), bool)
    feats = features_from_probs(probs, buf, jnp.asarray(3), mask)
    return Observation(buf, probs, feats, jnp.asarray(3), mask, jnp.float32(-2), jnp.float32(2),
                       jnp.asarray(0))


def test_a_checkpoint_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Every file, the directory, and the parent after the rename are flushed (a power loss
    must not leave a checkpoint whose files are empty)."""
    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def rename(a, b):
        events.append(("rename", os.path.basename(b)))
        real_rename(a, b)

    monkeypatch.setattr(C.os, "fsync", fsync)
    monkeypatch.setattr(C.os, "rename", rename)
    C.save_checkpoint(str(tmp_path / "ck"), random_params(), CFG, {}, {},
                      trainer_state={"iteration": np.array(3)})
    done = events.index(("rename", "ck"))
    flushed = {name for kind, name in events[:done] if kind == "fsync"}
    assert {C.PARAMS_FILE, C.CONFIG_FILE, C.TRAINER_FILE} <= flushed
    assert any(name.startswith(".tmp-ckpt-") for name in flushed)          # the directory
    assert ("fsync", tmp_path.name) in events[done:]                       # the parent


def test_a_checkpoint_killed_while_being_replaced_is_put_back(ckpt, monkeypatch):
    """Killed between setting the old checkpoint aside and renaming the new one into place,
    the directory holds neither; the next run's clean-up puts the old one back."""
    from causal_grpo import io
    path, params = ckpt
    parent = os.path.dirname(path)
    real_rename = os.rename

    def killed_at_the_second(src, dst):
        if os.path.basename(src).startswith(io.CKPT_TMP_PREFIX):
            raise SystemExit(137)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", killed_at_the_second)
    with pytest.raises(SystemExit):
        C.save_checkpoint(path, random_params(1), CFG, {"note": "new"}, {})
    monkeypatch.setattr(os, "rename", real_rename)
    assert not os.path.exists(path)
    io.drop_stale_partials(parent, min_age_s=0.0)
    assert sorted(os.listdir(parent)) == ["ck"]
    loaded = C.load_grpo_policy(path)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_policy_file_is_plain_builtins_only(ckpt):
    """Format 2: no global in the pickle stream; arrays as {dtype, shape, bytes} records that
    decode to the saved values."""
    import pickletools
    path, params = ckpt
    data = open(os.path.join(path, "policy_params.pkl"), "rb").read()
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ"}, ops
    blob = pickle.loads(data)
    assert blob["version"] == 2 and json.load(open(os.path.join(path, "config.json")))["version"] == 2
    for m, sub in params.items():
        for k, v in sub.items():
            r = blob["params"][m][k]
            assert r["dtype"] == "float32" and r["shape"] == list(v.shape)
            np.testing.assert_array_equal(np.frombuffer(r["data"], "<f4").reshape(v.shape), v)


def test_save_load_act_round_trip_gives_identical_actions(ckpt):
    path, params = ckpt
    assert sorted(os.listdir(path)) == ["config.json", "policy_params.pkl"]
    loaded = C.load_grpo_policy(path)
    assert loaded.config == CFG
    also = C.load_grpo_policy(os.path.join(path, "policy_params.pkl"))
    assert also.digest == loaded.digest
    select = jax.jit(make_policy_selector(CFG))
    obs = observation()
    for k in range(10):
        key = jax.random.PRNGKey(k)
        a = select(key, obs, params)
        b = select(key, obs, loaded.params)
        assert int(a.variable) == int(b.variable) and float(a.value) == float(b.value)
        assert float(a.log_prob) == pytest.approx(float(b.log_prob), abs=1e-6)


def test_a_phase1_output_directory_loads_its_final_policy(ckpt, tmp_path):
    """``--grpo-checkpoint RUN`` means RUN/final, the trained policy, not RUN/step_0."""
    path, _ = ckpt
    run = tmp_path / "run"
    run.mkdir()
    os.rename(path, run / "final")
    C.save_checkpoint(str(run / "step_0"), random_params(seed=1), CFG, {}, {})
    assert C.load_grpo_policy(str(run)).digest == C.load_grpo_policy(str(run / "final")).digest
    os.rename(run / "final", run / "unfinished")
    with pytest.raises(C.CheckpointError, match="nor in its final/"):
        C.load_grpo_policy(str(run))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED_MARKER",))


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    with open(tmp_path / "ck" / "policy_params.pkl", "wb") as f:
        pickle.dump({"format": C.FORMAT, "version": 2, "params": Exploit()}, f)
    with pytest.raises(C.CheckpointError, match="refusing to load"):
        C.load_grpo_policy(str(tmp_path / "ck"))
    assert not (tmp_path / "EXPLOITED_MARKER").exists()


@pytest.mark.parametrize("damage, needle", [
    ("missing_dir", "not found"),
    ("missing_file", "no policy_params.pkl"),
    ("truncated", "truncated or corrupt"),
    ("garbage", "truncated or corrupt"),
    ("wrong_shape", "do not fit the architecture"),
    ("missing_param", "do not fit the architecture"),
    ("not_ours", "not a causal-grpo policy file"),
    ("bad_config_json", "not valid JSON"),
    ("negative_prior", "must be a number in"),
])
def test_damaged_checkpoints_get_one_line_errors(ckpt, damage, needle, tmp_path):
    path, _ = ckpt
    pkl = os.path.join(path, "policy_params.pkl")
    target = path
    if damage == "missing_dir":
        target = str(tmp_path / "nope")
    elif damage == "missing_file":
        os.unlink(pkl)
    elif damage == "truncated":
        data = open(pkl, "rb").read()
        open(pkl, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(pkl, "wb").write(os.urandom(300))
    elif damage == "wrong_shape":
        cfg = json.load(open(os.path.join(path, "config.json")))
        cfg["architecture"]["hidden"] = 32
        json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    elif damage == "missing_param":
        blob = pickle.load(open(pkl, "rb"))
        blob["params"].pop(next(iter(blob["params"])))
        pickle.dump(blob, open(pkl, "wb"))
    elif damage == "not_ours":
        pickle.dump({"hello": [0.0, 1.0]}, open(pkl, "wb"))
    elif damage == "bad_config_json":
        open(os.path.join(path, "config.json"), "w").write("{oops")
    elif damage == "negative_prior":
        cfg = json.load(open(os.path.join(path, "config.json")))
        cfg["architecture"]["lookahead_prior"] = -1.0
        json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(C.CheckpointError, match=needle) as e:
        C.load_grpo_policy(target)
    assert "\n" not in str(e.value)


def test_intervention_fn_sees_its_history(ckpt):
    """LESSONS bug 2: the Phase-2 policy's choice depends on the data it has been shown."""
    path, _ = ckpt
    loaded = C.load_grpo_policy(path)
    spec = easy()
    fn = create_grpo_intervention_fn(loaded, spec, intervention_range=(-2.0, 2.0))
    with pytest.raises(UserError, match="no data"):
        fn()
    with pytest.raises(UserError, match="needs a fixed SCM.*a family of random graphs"):
        create_grpo_intervention_fn(loaded, "er10")
    rng = np.random.default_rng(0)
    fn.observe(rng.normal(size=(20, 5)))
    pv1, pb1 = fn.action_distribution()
    assert pv1[spec.target] < 1e-6 and pv1.sum() == pytest.approx(1, abs=1e-5)
    x = rng.normal(size=5)
    x[1] = 2.0
    fn.observe(x, np.arange(5) == 1)
    pv2, pb2 = fn.action_distribution()
    assert np.abs(pv1 - pv2).max() + np.abs(pb1 - pb2).max() > 1e-3
    j, v = fn()
    assert j != spec.target and -2.0 <= v <= 2.0
    assert len(fn.history) == 21


def test_intervention_fn_reads_the_observation_the_selector_gets(ckpt):
    """The stateful API builds the Phase-2 observation from its history: its distribution is
    the network's on surrogate features of that history, and greedy it takes their mode."""
    path, _ = ckpt
    loaded = C.load_grpo_policy(path)
    fn = create_grpo_intervention_fn(loaded, easy(), capacity=20)
    greedy = create_grpo_intervention_fn(loaded, easy(), capacity=20, greedy=True)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    fn.observe(x)
    greedy.observe(x)
    pv, _ = fn.action_distribution()
    from causal_grpo.networks import make_policy
    from causal_grpo.policy import policy_input, refit_posterior
    buf = Buffer(jnp.asarray(x), jnp.zeros((20, 5), bool), jnp.ones((20,), bool))
    obs = Observation(buf, jnp.zeros((5, 5)), jnp.zeros((5, 9)), jnp.asarray(3),
                      jnp.ones(5, bool), jnp.float32(-2), jnp.float32(2), jnp.asarray(0))
    sur, state = refit_posterior(jax.random.PRNGKey(0), obs)
    probs = sur.edge_probs(state)
    obs = obs._replace(probs=probs, features=features_from_probs(probs, buf, obs.target, obs.var_mask))
    out = make_policy(CFG).apply(loaded.params, None, policy_input(obs))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(out.var_logits)), pv, atol=1e-5)
    assert greedy()[0] == int(np.argmax(pv))


def test_a_lookahead_policy_round_trips_and_reads_its_lookahead(tmp_path):
    cfg = PolicyConfig(hidden=16, layers=1, heads=2, lookahead=1, lookahead_prior=1.5)
    params = init_params(Phase1Config(policy=cfg))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    loaded = C.load_grpo_policy(C.save_checkpoint(str(tmp_path / "ck"), params, cfg, {}, {}))
    assert loaded.config == cfg
    obs = observation()
    # The lookahead columns reach the logits.
    from causal_grpo.networks import make_policy
    from causal_grpo.policy import policy_input
    net = make_policy(cfg)
    la = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)), jnp.float32)
    x, y = (net.apply(params, None, policy_input(obs, s * la)).var_logits for s in (1.0, -1.0))
    assert float(jnp.abs(x - y).max()) > 1e-3
    # The seed document's stateful function computes the same lookahead from its own history.
    from causal_grpo.scm import sample_n
    spec = easy()
    fn = create_grpo_intervention_fn(loaded, spec)
    fn.observe(np.asarray(sample_n(jax.random.PRNGKey(0), spec.to_scm(), 20)))
    j, v = fn()
    assert j != spec.target and spec.intervention_range[0] <= v <= spec.intervention_range[1]
    # Acting-time draws: "auto" by default, part of the handle's digest; bad values refused.
    assert policy_handle(loaded).digest == loaded.digest + "-laauto"
    assert policy_handle(loaded, lookahead_draws=1).digest == loaded.digest
    for bad in (0, "many"):
        with pytest.raises(UserError, match="positive integer or 'auto'"):
            create_grpo_intervention_fn(loaded, spec, lookahead_draws=bad)
        with pytest.raises(UserError, match="positive integer or 'auto'"):
            policy_handle(loaded, lookahead_draws=bad)
