"""GRPO maths against plain references, and learning that really changes and improves things."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_grpo import grpo
from causal_grpo import phase1 as P
from causal_grpo.metrics import expected_shd
from causal_grpo.networks import PolicyConfig, action_log_prob, make_policy
from causal_grpo.scm_families import GraphKind


def test_group_advantages_match_a_plain_loop_and_are_zero_mean():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = rng.normal(size=16) * rng.uniform(0.1, 5)
        mean = sum(r) / len(r)
        std = (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5
        ref = [(x - mean) / std for x in r]
        got = np.asarray(grpo.group_advantages(jnp.asarray(r, jnp.float32)))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        assert abs(got.mean()) < 1e-5


def test_all_equal_rewards_give_zero_advantages_not_nan():
    adv = grpo.group_advantages(jnp.full((8,), 0.3))
    assert np.all(np.asarray(adv) == 0)


@pytest.mark.parametrize("jit", [False, True])
def test_clipped_objective_on_hand_made_numbers(jit):
    f = jax.jit(grpo.clipped_objective, static_argnums=(3, 4)) if jit else grpo.clipped_objective
    logp_old = jnp.zeros(4)
    logp = jnp.log(jnp.array([1.5, 1.5, 0.5, 0.5]))
    adv = jnp.array([1.0, -1.0, 1.0, -1.0])
    obj, clipped = f(logp, logp_old, adv, 0.2, 0.2)
    # ratio 1.5, A=+1: min(1.5, 1.2) = 1.2;  A=-1: min(-1.5, -1.2) = -1.5
    # ratio 0.5, A=+1: min(0.5, 0.8) = 0.5;  A=-1: min(-0.5, -0.8) = -0.8
    np.testing.assert_allclose(np.asarray(obj), [1.2, -1.5, 0.5, -0.8], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipped), [1, 1, 1, 1])
    # Asymmetric clip-higher: upper bound 1.3 instead of 1.2.
    obj, _ = f(logp, logp_old, adv, 0.2, 0.3)
    np.testing.assert_allclose(np.asarray(obj), [1.3, -1.5, 0.5, -0.8], rtol=1e-6)
    # Inside the trust region nothing is clipped and the objective is ratio * A.
    obj, clipped = f(jnp.log(jnp.array([1.1])), jnp.zeros(1), jnp.array([2.0]), 0.2, 0.2)
    np.testing.assert_allclose(np.asarray(obj), [2.2], rtol=1e-6)
    assert float(clipped[0]) == 0


TINY = P.Phase1Config(
    curriculum=(P.Stage(sizes=(4, 5), d_pad=5, iterations=30, episodes=8),),
    graph_kind=GraphKind.ER, steps_per_episode=4, n_observational=15,
    grpo=grpo.GRPOConfig(group_size=8, learning_rate=3e-3), eval_every=0)
# Without the lookahead input (cheaper, and learning starts from scratch): for the tests of
# mechanisms the lookahead does not touch.
PLAIN = dataclasses.replace(TINY, policy=PolicyConfig(lookahead=0, lookahead_prior=0.0))


@pytest.fixture(scope="module")
def collected():
    tr = P.Trainer(TINY)
    state = tr.initial_state()
    batch, stats = tr.collect_fn(0, state.params, tr.episode_keys(0))
    return tr, state, batch, stats


def test_batch_holds_groups_from_one_state_with_acting_log_probs(collected):
    """LESSONS bug 4: a group is G candidates of the *same* state, logp_old is real."""
    tr, state, batch, _ = collected
    N = 8 * 4
    assert batch.variable.shape == (N, 8) and batch.inputs.values.shape[0] == N
    net = make_policy(TINY.policy)

    def recompute(inp, var, vbin):
        out = net.apply(state.params, None, inp)
        return jax.vmap(lambda j, b: action_log_prob(out, j, b))(var, vbin)

    logp = jax.vmap(recompute)(batch.inputs, batch.variable, batch.value_bin)
    # The recorded log-probs are those of the stored inputs under the acting parameters.
    np.testing.assert_allclose(np.asarray(logp), np.asarray(batch.logp_old), atol=1e-5)
    assert np.all(np.asarray(batch.logp_old) < 0)
    adv = np.asarray(batch.advantages)
    np.testing.assert_allclose(adv.mean(1), 0, atol=1e-5)
    # Chosen variables are real, non-target variables.
    tgt = np.asarray(batch.inputs.target)
    mask = np.asarray(batch.inputs.var_mask)
    var = np.asarray(batch.variable)
    assert (var != tgt[:, None]).all()
    assert np.take_along_axis(mask, var, 1).all()


def test_rewards_depend_on_the_outcome():
    """LESSONS bug 5: the reward is the drop in expected SHD caused by the candidate's sample."""
    data = jax.jit(lambda k, p: P.rollout_episode(k, p, PLAIN, PLAIN.curriculum[0]))(
        jax.random.PRNGKey(5), P.init_params(PLAIN))
    rs = np.asarray(data.structure)
    assert rs.shape == (4, 8)
    assert np.ptp(rs, axis=1).max() > 0           # different outcomes, different rewards
    np.testing.assert_allclose(np.asarray(data.rewards), rs)   # target weight 0 by default
    # The advantages trained on are each group's normalised rewards.
    np.testing.assert_allclose(np.asarray(data.batch.advantages),
                               np.asarray(jax.vmap(grpo.group_advantages)(data.rewards)),
                               rtol=1e-5, atol=1e-6)
    # Hand check of the structure term on a 2-variable case.
    adj = jnp.array([[0.0, 1.0], [0.0, 0.0]])
    before = jnp.array([[0.0, 0.4], [0.4, 0.0]])
    after = jnp.array([[0.0, 0.9], [0.05, 0.0]])
    from causal_grpo.rewards import structure_reward
    r = structure_reward(adj, before, after, jnp.ones(2, bool))
    assert float(r) == pytest.approx((1 - 0.4) - (1 - 0.9), abs=1e-6)
    assert float(expected_shd(adj, after)) == pytest.approx(0.1, abs=1e-6)
    # Surer of an edge it already has right: expected SHD pays for that too.
    surer = jnp.array([[0.0, 0.99], [0.0, 0.0]])
    assert float(structure_reward(adj, after, surer, jnp.ones(2, bool))) == pytest.approx(0.09, abs=1e-6)


def test_one_update_changes_the_parameters(collected):
    """LESSONS bug 3: an update really runs (no swallowed error, no untouched weights)."""
    tr, state, batch, _ = collected
    new, metrics = tr._update(state, batch)
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, new.params)
    assert max(jax.tree.leaves(diffs)) > 1e-5
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert int(new.step) == 1


def test_short_training_raises_the_mean_reward():
    """On fixed evaluation episodes (same SCMs, same noise) reward rises after training.

    From scratch (no lookahead prior, which would start it near a good chooser): the network
    itself must learn."""
    cfg = PLAIN
    tr = P.Trainer(cfg)
    state = tr.initial_state()
    eval_keys = jax.vmap(lambda e: P.episode_key(jax.random.PRNGKey(99), 0, e))(jnp.arange(32))
    n = cfg.curriculum[0].episodes

    def evaluate(params):   # 32 episodes through training's own compiled collector
        stats = [tr._collect_local(0, params, eval_keys[i:i + n])[1] for i in range(0, 32, n)]
        return {k: float(np.mean([s[k] for s in stats])) for k in ("reward", "value_at_extreme")}

    before = evaluate(state.params)["reward"]
    for it in range(cfg.iterations):
        state, m = tr.step(state, it)
    after_stats = evaluate(state.params)
    after = after_stats["reward"]
    assert after > before * 1.1, (before, after)
    # What it learnt is visible in its actions: values pushed towards the ends of the range.
    assert after_stats["value_at_extreme"] > 2 / 9 + 0.1


def test_update_raises_on_non_finite_numbers(collected):
    """Numeric errors crash: a NaN advantage propagates to a NaN loss, which training rejects."""
    tr, state, batch, _ = collected
    bad = batch._replace(advantages=batch.advantages.at[0, 0].set(jnp.nan))
    _, metrics = tr._update(state, bad)
    assert not np.isfinite(float(metrics["loss"]))


def test_lookahead_inputs_are_recorded_and_trained_on(collected):
    """The default policy reads the lookahead: the recorded inputs carry the two lookahead
    columns (z-scored, computed at acting time) and the update runs on exactly those inputs."""
    from causal_grpo.features import N_FEATURES
    tr, state, batch, _ = collected
    assert TINY.policy.lookahead and TINY.policy.lookahead_prior > 0
    feats = np.asarray(batch.inputs.features)
    assert feats.shape[-1] == N_FEATURES + 2
    la = feats[..., N_FEATURES:]
    assert np.abs(la).max() > 0.5 and np.all(la[np.arange(len(la)), np.asarray(batch.inputs.target)] == 0)
    new, m = tr._update(state, batch)
    scales = [float(new.params["policy"][k] - state.params["policy"][k])
              for k in ("lookahead_var_scale", "lookahead_value_scale")]
    assert max(abs(x) for x in scales) > 1e-6 and np.isfinite(m["loss"])   # the prior's scale learns


def _joint(var_logits, value_logits):
    """The joint (variable, bin) probabilities, by hand."""
    v = np.exp(var_logits - np.max(var_logits))
    v = v / v.sum()
    b = np.exp(value_logits - value_logits.max(-1, keepdims=True))
    return v[:, None] * b / b.sum(-1, keepdims=True)


def test_entropy_kl_and_log_probs_on_hand_made_numbers():
    """The joint's exact entropy, KL(pi || ref) and log pi(j, b) against sums over its 6
    actions (variable 2 masked out: probability 0 contributes nothing)."""
    from causal_grpo.networks import PolicyOutput, entropy, kl_divergence
    out = PolicyOutput(jnp.array([0.3, -1.2, -jnp.inf]), jnp.array([[0.5, -0.5], [2.0, 0.0],
                                                                    [0.0, 0.0]]))
    ref = PolicyOutput(jnp.array([0.0, 0.0, -jnp.inf]), jnp.array([[0.0, 1.0], [0.0, 0.0],
                                                                   [0.0, 0.0]]))
    p = _joint(np.array([0.3, -1.2, -np.inf]), np.asarray(out.value_logits))
    q = _joint(np.array([0.0, 0.0, -np.inf]), np.asarray(ref.value_logits))
    live = p > 0
    np.testing.assert_allclose(float(entropy(out)), -(p[live] * np.log(p[live])).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(kl_divergence(out, ref)),
                               (p[live] * np.log(p[live] / q[live])).sum(), rtol=1e-5)
    assert abs(float(kl_divergence(out, out))) < 1e-6
    for j, b in ((0, 1), (1, 0)):
        np.testing.assert_allclose(float(action_log_prob(out, j, b)), np.log(p[j, b]), rtol=1e-5)


def test_the_loss_is_minus_the_objective_minus_entropy_plus_kl():
    """grpo_loss = -mean(clipped objective) - entropy_coef * mean(H) + kl_coef * mean(KL),
    each by hand, for a 'policy' whose output is its parameters (2 states x 2 candidates)."""
    from types import SimpleNamespace

    from causal_grpo.networks import PolicyOutput
    params = {"v": jnp.array([0.4, -0.4]), "b": jnp.array([[1.0, 0.0], [0.0, 0.5]])}
    ref_params = {"v": jnp.zeros(2), "b": jnp.zeros((2, 2))}
    policy = SimpleNamespace(apply=lambda prm, rng, inp: PolicyOutput(prm["v"], prm["b"]))
    variable, value_bin = jnp.array([[0, 1], [1, 1]]), jnp.array([[0, 1], [0, 1]])
    logp_old = jnp.log(jnp.array([[0.2, 0.3], [0.25, 0.05]]))
    adv = jnp.array([[1.0, -1.0], [-0.5, 2.0]])
    batch = grpo.Batch(jnp.zeros((2, 1)), variable, value_bin, logp_old, adv)
    cfg = grpo.GRPOConfig(clip_eps=0.2, entropy_coef=0.1, kl_coef=0.5)
    loss, _ = grpo.grpo_loss(params, ref_params, batch, policy, cfg)
    p = _joint(np.asarray(params["v"]), np.asarray(params["b"]))
    ratio = p[np.asarray(variable), np.asarray(value_bin)] / np.exp(np.asarray(logp_old))
    a = np.asarray(adv)
    obj = np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a)
    h = -(p * np.log(p)).sum()
    kl = (p * np.log(p / 0.25)).sum()                 # the reference is uniform on 4 actions
    np.testing.assert_allclose(float(loss), -obj.mean() - 0.1 * h + 0.5 * kl, rtol=1e-5)


def test_no_phase1_key_serves_two_purposes():
    """Under partitionable threefry split(key, n)[i] is fold_in(key, i). The G candidates were
    sampled with split(select_key, G), whose second key is the lookahead's outcome key, and
    training's root key was fold_in(PRNGKey(seed), 1), the first key Haiku's init draws the
    weights from (checked: the first layer's weights were a draw from it)."""
    from causal_grpo.active_learning import lookahead_key, refit_key
    with jax.threefry_partitionable(True):
        k = jax.random.fold_in(jax.random.PRNGKey(3), 7)
        taken = {tuple(np.asarray(x).tolist())
                 for x in (k, lookahead_key(k), refit_key(k), *jax.random.split(k, 64))}
        cand = {tuple(np.asarray(x).tolist()) for x in P.candidate_keys(k, 64)}
        assert len(cand) == 64 and not cand & taken
        root = jax.random.PRNGKey(TINY.seed)
        init_keys = {tuple(np.asarray(x).tolist()) for x in jax.random.split(root, 1024)}
        assert tuple(np.asarray(P.train_key(TINY)).tolist()) not in init_keys
