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
        dr = np.asarray(grpo.group_advantages(jnp.asarray(r, jnp.float32), normalize_std=False))
        np.testing.assert_allclose(dr, [x - mean for x in r], rtol=1e-4, atol=1e-5)


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
    data = jax.jit(lambda k, p: P.rollout_episode(k, p, TINY, TINY.curriculum[0]))(
        jax.random.PRNGKey(5), P.init_params(TINY))
    rs = np.asarray(data.structure)
    assert rs.shape == (4, 8)
    assert np.ptp(rs, axis=1).max() > 0           # different outcomes, different rewards
    np.testing.assert_allclose(np.asarray(data.rewards), rs)   # target weight 0 by default
    # Hand check of the structure term on a 2-variable case.
    adj = jnp.array([[0.0, 1.0], [0.0, 0.0]])
    before = jnp.array([[0.0, 0.4], [0.4, 0.0]])
    after = jnp.array([[0.0, 0.9], [0.05, 0.0]])
    from causal_grpo.rewards import structure_reward
    r = structure_reward(adj, before, after, jnp.ones(2, bool))
    assert float(r) == pytest.approx((1 - 0.4) - (1 - 0.9), abs=1e-6)
    assert float(expected_shd(adj, after)) == pytest.approx(0.1, abs=1e-6)
    # Point-estimate share: before, "no edge" is not beaten by either direction (0.4 vs 0.4),
    # so the estimate is empty (SHD 1); after, it is 0 -> 1 (SHD 0): a drop of 1.
    m = structure_reward(adj, before, after, jnp.ones(2, bool), map_share=0.5)
    assert float(m) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0, abs=1e-6)
    # Surer of an edge the estimate already has right: expected SHD pays, the estimate does not.
    surer = jnp.array([[0.0, 0.99], [0.0, 0.0]])
    assert float(structure_reward(adj, after, surer, jnp.ones(2, bool), map_share=1.0)) == 0.0
    assert float(structure_reward(adj, after, surer, jnp.ones(2, bool))) > 0.05


def test_averaged_outcomes_keep_the_trajectory_and_average_the_rewards():
    """reward.outcomes = M: the episode still advances with outcome 0 (same states and
    candidates as M = 1), and a candidate's reward is the mean over M noise draws."""
    import dataclasses
    from causal_grpo.rewards import RewardConfig
    key, params = jax.random.PRNGKey(5), P.init_params(PLAIN)
    run = lambda cfg: jax.jit(lambda k, p: P.rollout_episode(k, p, cfg, cfg.curriculum[0]))(key, params)
    one = run(PLAIN)
    four = run(dataclasses.replace(PLAIN, reward=RewardConfig(outcomes=4)))
    for a, b in zip(jax.tree.leaves(one.batch.inputs), jax.tree.leaves(four.batch.inputs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(one.batch.variable), np.asarray(four.batch.variable))
    assert not np.allclose(np.asarray(one.structure), np.asarray(four.structure))
    # Averaging removes most of the outcome noise from the spread inside a group (here about
    # 0.33 -> 0.20 on average over 16 episodes).
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    spread = lambda cfg: float(np.asarray(jax.jit(jax.vmap(
        lambda k: P.rollout_episode(k, params, cfg, cfg.curriculum[0]).structure))(keys)).std(-1).mean())
    assert spread(dataclasses.replace(PLAIN, reward=RewardConfig(outcomes=4))) < 0.8 * spread(PLAIN)


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
    collect = P.make_collect(cfg, cfg.curriculum[0])
    before = float(collect(state.params, eval_keys)[1]["reward"])
    for it in range(cfg.iterations):
        state, m = tr.step(state, it)
    after_stats = collect(state.params, eval_keys)[1]
    after = float(after_stats["reward"])
    assert after > before * 1.1, (before, after)
    # What it learnt is visible in its actions: values pushed towards the ends of the range.
    assert float(after_stats["value_at_extreme"]) > 2 / 9 + 0.1


def test_update_raises_on_non_finite_numbers(collected):
    """Numeric errors crash: a NaN advantage propagates to a NaN loss, which training rejects."""
    tr, state, batch, _ = collected
    bad = batch._replace(advantages=batch.advantages.at[0, 0].set(jnp.nan))
    _, metrics = tr._update(state, bad)
    assert not np.isfinite(float(metrics["loss"]))


def test_noise_level_per_graph_gives_equal_variance_graphs_at_every_level():
    stage = P.DEFAULT_CURRICULUM[1]
    keys = jax.random.split(jax.random.PRNGKey(3), 128)

    def draw(cfg):
        return jax.jit(jax.vmap(lambda k: P.sample_stage_scm(k, stage, cfg)))(keys)

    plain = draw(P.Phase1Config())
    graph = draw(P.Phase1Config(noise_level_range=(0.1, 2.0)))
    np.testing.assert_array_equal(plain.adj, graph.adj)           # only the noise changes
    np.testing.assert_array_equal(plain.weights, graph.weights)
    mask = np.asarray(graph.var_mask)
    spread = []
    for std, m in zip(np.asarray(graph.noise_std), mask):
        s = std[m]
        assert s.max() / s.min() <= 1.25 / 0.75 + 1e-5               # one level per graph
        spread.append(np.exp(np.log(s).mean()))
    spread = np.array(spread)
    assert spread.min() < 0.2 and spread.max() > 1.2                # low- and high-noise graphs
    ratio = [s[m].max() / s[m].min() for s, m in zip(np.asarray(plain.noise_std), mask)]
    assert np.median(ratio) > 3                                     # the per-node default differs


def test_teacher_target_on_hand_made_gains():
    bins = P.teacher_bins(9, 2)
    assert list(bins) == [0, 8]                      # the two ends of the range
    assert list(P.teacher_bins(9, 3)) == [0, 4, 8]
    inf = float("inf")
    gains = jnp.array([[1.0, 3.0], [-inf, -inf], [2.0, 2.0]])      # variable 1: the target
    q = np.asarray(P.teacher_target(gains, bins, 9, 0.5))
    z = (np.array([1.0, 3.0, 2.0, 2.0]) - 2.0) / np.sqrt(0.5)       # z-scored over allowed
    e = np.exp(z / 0.5)
    e /= e.sum()
    want = np.zeros((3, 9))
    want[0, [0, 8]], want[2, [0, 8]] = e[:2], e[2:]
    np.testing.assert_allclose(q, want, rtol=1e-5, atol=1e-7)
    flat = np.asarray(P.teacher_target(jnp.array([[0.5, 0.5], [-inf, -inf], [0.5, 0.5]]),
                                       bins, 9, 0.5))
    np.testing.assert_allclose(flat[[0, 2]][:, [0, 8]], 0.25, rtol=1e-6)   # equal: uniform
    assert flat[1].sum() == 0


def test_cross_entropy_matches_the_joint_log_probabilities():
    from causal_grpo.networks import PolicyOutput
    rng = np.random.default_rng(1)
    out = PolicyOutput(jnp.asarray(rng.normal(size=4), jnp.float32),
                       jnp.asarray(rng.normal(size=(4, 3)), jnp.float32))
    q = np.zeros((4, 3))
    q[0, 0], q[2, 2], q[3, 1] = 0.5, 0.3, 0.2
    want = -sum(q[j, b] * float(action_log_prob(out, j, b)) for j in range(4) for b in range(3))
    assert float(grpo.cross_entropy(out, jnp.asarray(q))) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("source", ["truth"])   # the plug-in path: test_lookahead_features_*
def test_distillation_targets_are_collected_and_learned(source):
    """With distill_coef > 0 every state carries the teacher's target (no mass on the target
    variable or padding), and updates on it alone move the policy towards it."""
    cfg = dataclasses.replace(PLAIN, grpo=dataclasses.replace(TINY.grpo, distill_coef=1.0,
                                                             entropy_coef=0.0),
                              teacher=P.TeacherConfig(source=source))
    tr = P.Trainer(cfg)
    state = tr.initial_state()
    batch, stats = tr.collect_fn(0, state.params, tr.episode_keys(0))
    q = np.asarray(batch.teacher)
    assert q.shape == (32, 5, 9)
    np.testing.assert_allclose(q.sum((1, 2)), 1.0, rtol=1e-5)
    target, mask = np.asarray(batch.inputs.target), np.asarray(batch.inputs.var_mask)
    assert np.all(q[np.arange(32), target] == 0) and np.all(q.sum(2)[~mask] == 0)
    assert np.ptp(q.sum(2), axis=1).max() > 0.1      # gains differ between variables
    assert "teacher_mass" in stats
    if source == "plugin":      # the same learning path; checking it once is enough
        return
    batch = batch._replace(advantages=jnp.zeros_like(batch.advantages))
    ce = [float(grpo.grpo_loss(state.params, state.ref_params, batch, tr.net, cfg.grpo)[1]["teacher_ce"])]
    for _ in range(5):
        state, m = tr._update(state, batch)
    ce.append(float(grpo.grpo_loss(state.params, state.ref_params, batch, tr.net, cfg.grpo)[1]["teacher_ce"]))
    assert ce[1] < ce[0] - 0.05, ce


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
