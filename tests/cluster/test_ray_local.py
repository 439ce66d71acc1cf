"""Real local Ray: identical results for 0/1/2 workers, and actor processes killed on purpose.

Pools are module-scoped: an actor compiles its programs once and serves several tests, which
is also how the jobs use them.
"""

import dataclasses
import os
import re
import signal
import threading
import time

import jax
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from causal_grpo import grpo  # noqa: E402
from causal_grpo import phase1 as P  # noqa: E402
from causal_grpo.active_learning import EpisodeConfig, Method  # noqa: E402
from causal_grpo.scm_families import GraphKind, resolve_scm  # noqa: E402
from causal_grpo.sweep import SweepConfig, plan_batches, run_batch  # noqa: E402
from cluster.grpo_driver import RolloutPool  # noqa: E402
from cluster.pool import FaultTolerantPool, Worker, worker_actor  # noqa: E402
from cluster.sweep_driver import SweepPool  # noqa: E402

pytestmark = pytest.mark.ray

# One SCM size (5) so that each actor compiles one Phase-2 program.
SOURCES = {n: resolve_scm(n) for n in ("easy", "er5")}
CFG = SweepConfig(scms=("easy", "er5"), methods=(Method.RANDOM, Method.UNCERTAINTY), seeds=6,
                  episode=EpisodeConfig(n_observational=12, n_interventions=6), batch_size=3)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference():
    """The undisturbed in-process sweep."""
    return {b: run_batch(b, CFG, None, SOURCES) for b in plan_batches(CFG)}


@pytest.fixture(scope="class")
def pool2(local_ray):
    with SweepPool(CFG, SOURCES, None, 2) as pool:
        yield pool


def assert_same(results, reference):
    assert set(results) == set(reference)
    for b, arrays in reference.items():
        for k, v in arrays.items():
            np.testing.assert_array_equal(results[b][k], v, err_msg=f"{b} {k}")


def test_sweep_on_one_worker_is_identical_to_in_process(local_ray, reference):
    with SweepPool(CFG, SOURCES, None, 1) as pool:
        assert_same(dict(pool.run(plan_batches(CFG))), reference)


def test_a_policy_sweep_on_one_worker_acts_as_in_process(local_ray):
    """The policy (default architecture, lookahead with 2 draws when acting) travels to the
    actor as plain data and is rebuilt there: same actions as in-process."""
    from causal_grpo.checkpoint import load_grpo_policy, save_checkpoint
    from causal_grpo.policy import policy_handle
    import tempfile
    cfg_p = P.Phase1Config()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(os.path.join(tmp, "ck"), P.init_params(cfg_p), cfg_p.policy, {}, {})
        policy = policy_handle(load_grpo_policy(path), lookahead_draws=2)
    assert policy.digest.endswith("-la2") and policy.lookahead_draws == 2
    cfg = SweepConfig(scms=("easy",), methods=(Method.GRPO_ACTIVE,), seeds=2,
                      episode=EpisodeConfig(n_observational=10, n_interventions=3), batch_size=2)
    ref = {b: run_batch(b, cfg, policy, SOURCES) for b in plan_batches(cfg)}
    with SweepPool(cfg, SOURCES, policy, 1) as pool:
        got = dict(pool.run(plan_batches(cfg)))
    for b, arrays in ref.items():
        np.testing.assert_array_equal(got[b]["variable"], arrays["variable"])
        np.testing.assert_allclose(got[b]["f1"], arrays["f1"], atol=1e-6)


class TestTwoWorkers:
    """Tests sharing one warm 2-actor pool (torn down before the Phase-1 pools start)."""

    def test_workers_sharing_a_machine_share_its_memory(self, pool2, monkeypatch):
        """Each of two workers on this 2-CPU Ray counts itself one of 2 sharing the memory, and
        with that share a batch that fits the machine once but not twice is refused."""
        from causal_grpo import io, sweep
        from causal_grpo.errors import UserError
        batch = plan_batches(CFG)[0]
        cfg = dataclasses.replace(CFG, methods=(batch.method,))
        sweep._RUNNERS.clear()
        run_batch(batch, cfg, None, SOURCES)
        exe = next(iter(next(iter(sweep._RUNNERS.values())).executables.values()))
        m = exe.memory_analysis()
        need = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
        shares = [a.__ray_call__.remote(lambda w: (w.memory_share, w.memory_registry))
                  for a in pool2.actors]
        assert ray.get(shares) == [(2, pool2.memory_registry)] * 2   # one registry per pool
        monkeypatch.setattr(io, "available_memory_bytes", lambda: int(1.5 * need))
        sweep._RUNNERS.clear()
        run_batch(batch, cfg, None, SOURCES, memory_share=1)          # fits alone
        sweep._RUNNERS.clear()
        with pytest.raises(UserError, match="for each of 2 workers .* lower --batch-size or "
                                            "--num-workers"):
            run_batch(batch, cfg, None, SOURCES, memory_share=2)

    def test_sweep_on_two_workers_is_identical_to_in_process(self, pool2, reference):
        assert_same(dict(pool2.run(plan_batches(CFG))), reference)
        # The workers' notes of their running programs went with them, and their directory.
        assert not os.path.exists(pool2.memory_registry)


    def test_killing_an_actor_mid_sweep_loses_nothing(self, pool2, reference):
        pids = ray.get([a.pid.remote() for a in pool2.actors])
        failures = pool2.pool.failures
        results = {}
        for b, arrays in pool2.run(plan_batches(CFG)):
            if not results:
                os.kill(pids[0], signal.SIGKILL)          # a real process, killed on purpose
            results[b] = arrays
        assert pool2.pool.failures > failures
        assert_same(results, reference)


    def test_a_hung_actor_is_replaced_and_its_work_resubmitted(self, pool2, reference, caplog):
        """A stopped process (SIGSTOP) answers no heartbeat: replaced after the no-progress
        timeout, its batch rerun elsewhere, nothing lost or doubled."""
        pool = pool2.pool
        saved = pool.no_progress_timeout, pool.heartbeat_interval
        pool.no_progress_timeout, pool.heartbeat_interval = 4.0, 0.5
        pids = ray.get([a.pid.remote() for a in pool2.actors])
        failures = pool.failures
        results, stopped = {}, None
        try:
            for b, arrays in pool2.run(plan_batches(CFG)):
                if not results:
                    os.kill(pids[1], signal.SIGSTOP)
                    stopped = time.time()
                results[b] = arrays
        finally:
            pool.no_progress_timeout, pool.heartbeat_interval = saved
            try:
                os.kill(pids[1], signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert pool.failures == failures + 1
        # Found by the 4-s timeout, not the default 120 s (the run's own length includes the
        # replacement's compiling, which a loaded machine can stretch past 120 s).
        lost = [(r, re.search(r"lost \(no heartbeat answer for (\d+)s\)", r.getMessage()))
                for r in caplog.records]
        lost = [(r.created - stopped, int(m.group(1))) for r, m in lost if m]
        assert len(lost) == 1 and lost[0][0] < 60 and lost[0][1] < 60, lost
        assert pids[1] not in ray.get([a.pid.remote() for a in pool2.actors])
        assert_same(results, reference)


@worker_actor
class Sleeper(Worker):
    """Work of a chosen length, a process that dies of its work (SIGKILL) every time, work
    refused as bad input, or work that runs out of memory."""

    def run(self, item):
        if item == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if item in ("refuse", "refuse after 1 s"):
            from causal_grpo.errors import UserError
            time.sleep(0.0 if item == "refuse" else 1.0)
            raise UserError("a batch of 9 seeds would need about 99 GB of memory")
        if item == "oom":           # XLA's own out-of-memory error, as a device's would be
            import jax.numpy as jnp
            jnp.zeros((2**38,), jnp.float32).block_until_ready()
        time.sleep(item)
        return item


def _sleepers(n):
    return FaultTolerantPool(lambda: Sleeper.options(num_cpus=0.25).remote(), n,
                             no_progress_timeout=2.0, heartbeat_interval=0.25, max_attempts=3)


def test_an_autoscaling_cluster_gets_an_hour_to_start_a_worker(local_ray, monkeypatch):
    """A GPU node the autoscaler adds boots and pulls its image first: with
    CAUSAL_GRPO_AUTOSCALING=1 the pool waits an hour, not 15 minutes, for a first worker."""
    from cluster.pool import ActorGroup
    for env, timeout in (("1", 3600.0), ("0", 900.0)):
        monkeypatch.setenv("CAUSAL_GRPO_AUTOSCALING", env)
        with ActorGroup(Sleeper, lambda: (), 1) as group:
            assert group.pool.start_timeout == timeout


def test_slow_work_is_never_taken_for_a_hang(local_ray):
    """A batch far longer than the no-progress timeout completes on its first worker."""
    pool = _sleepers(1)
    try:
        t0 = time.time()
        got = dict(pool.map_unordered(lambda a, s: a.run.remote(s), [8.0, 0.1]))
        assert got == {0: 8.0, 1: 0.1} and time.time() - t0 >= 8.0
        assert pool.failures == 0
    finally:
        pool.close()


def test_a_batch_that_kills_every_worker_stops_the_run_with_one_line(local_ray, capsys):
    """Its worker dies three times in a row on it: the run stops, naming the batch (the CLIs
    print the failure as one line, exit code 1); the other batch's result came first."""
    from jobs._cli import user_errors_exit_2
    pool = _sleepers(2)
    done = []

    @user_errors_exit_2("job")
    def job():
        for k, r in pool.map_unordered(lambda a, s: a.run.remote(s), [0.1, "crash"],
                                       describe=lambda s: f"<{s}>"):
            done.append(k)

    try:
        with pytest.raises(SystemExit) as e:
            job()
    finally:
        pool.close()
    assert e.value.code == 1 and pool.failures == 2 and done == [0]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("job: batch <crash> lost its worker 3 times in a row "
                       "(last: ActorDiedError); stopping"), err


@pytest.mark.parametrize("item, code, line", [
    ("refuse", 2, "job: error: a batch of 9 seeds would need about 99 GB of memory"),
    ("oom", 1, "job: ran out of memory (RESOURCE_EXHAUSTED: Out of memory allocating "
               "1099511627776 bytes"),
])
def test_a_workers_bad_input_or_lack_of_memory_is_one_line(local_ray, capsys, item, code, line):
    """A UserError raised inside an actor (e.g. a batch whose compiled program does not fit)
    reaches the CLI as RayTaskError(UserError): one line, its own message, exit code 2. XLA's
    RESOURCE_EXHAUSTED there (a device smaller than the memory check assumed) arrives as
    RayTaskError(JaxRuntimeError): one line naming it, exit code 1, not a traceback."""
    from jobs._cli import user_errors_exit_2
    pool = _sleepers(1)

    @user_errors_exit_2("job")
    def job():
        list(pool.map_unordered(lambda a, s: a.run.remote(s), [item]))

    try:
        with pytest.raises(SystemExit) as e:
            job()
    finally:
        pool.close()
    assert e.value.code == code
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith(line), err
    assert item == "refuse" and err == line or "smaller --batch-size" in err


def test_a_failing_batch_stops_the_run_after_the_results_ready_beside_it(local_ray):
    """Batches 1 (refused) and 2 finish while the caller stores batch 0; batch 2's finished
    result is yielded (and stored by the sweep) before the refusal stops the run."""
    from causal_grpo.errors import UserError
    pool = _sleepers(3)
    run = lambda a, s: a.run.remote(s)    # noqa: E731
    got = []
    try:
        while len(pool.idle) < 3:             # every worker started: all three batches at once
            list(pool.map_unordered(run, [0.5] * 3))
        with pytest.raises(UserError):
            for k, _ in pool.map_unordered(run, [0.0, "refuse after 1 s", 1.0]):
                got.append(k)
                if k == 0:
                    time.sleep(3.0)
    finally:
        pool.close()
    assert got == [0, 2]


@worker_actor
class CutOff(Worker):
    """Answers the readiness ping, then every heartbeat fails as from a node the driver can no
    longer reach (ActorUnavailableError) while its work never returns."""

    def __init__(self):
        super().__init__()
        self.pings = 0

    @ray.method(concurrency_group="heartbeat")
    def pid(self) -> int:
        self.pings += 1
        if self.pings > 1:
            from ray.exceptions import ActorUnavailableError
            raise ActorUnavailableError("the node cannot be reached", None)
        return os.getpid()

    def run(self, item):
        time.sleep(3600)


def test_failing_heartbeats_are_no_answer(local_ray):
    """A heartbeat that fails is not an answer: the actor is replaced after the no-progress
    timeout (counted as an answer, it kept the driver waiting for the work forever), and its
    batch, which loses every worker, stops the run."""
    from cluster.pool import PoolFailure
    pool = FaultTolerantPool(lambda: CutOff.options(num_cpus=0.25).remote(), 1,
                             no_progress_timeout=2.0, heartbeat_interval=0.25, max_attempts=2)
    t0 = time.time()
    try:
        with pytest.raises(PoolFailure, match="lost its worker 2 times in a row .*no heartbeat"):
            list(pool.map_unordered(lambda a, s: a.run.remote(s), [1]))
    finally:
        pool.close()
    assert pool.failures == 1 and time.time() - t0 < 60


@worker_actor
class BadStart(Worker):
    """A worker whose constructor raises (bad input, a module its node lacks) or whose
    process dies while it starts."""

    def __init__(self, kind):
        super().__init__()
        if kind == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "ok":
            return
        if kind == "user":     # a subclass of UserError, as every bad-input error is
            from causal_grpo.checkpoint import CheckpointError
            raise CheckpointError("the policy file holds no policy")
        import a_module_this_node_lacks  # noqa: F401

    def run(self, item):
        return item


@pytest.mark.parametrize("kind,code,line", [
    ("user", 2, "job: error: the policy file holds no policy"),
    ("import", 1, "job: a worker failed to start: ModuleNotFoundError: No module named "
                  "'a_module_this_node_lacks'"),
    ("die", 1, "job: 6 workers in a row died before they started (last: ActorDiedError); "
               "stopping")])
def test_a_worker_that_cannot_start_stops_the_run_with_its_error(local_ray, capsys, kind, code,
                                                                 line):
    """No replacement would start either: the first failed constructor stops the run with its
    own error, and processes that keep dying at start stop it after max_attempts per slot
    (not endless replacements, which kept the start timeout from ever firing)."""
    from jobs._cli import user_errors_exit_2
    pool = FaultTolerantPool(lambda: BadStart.options(num_cpus=0.25).remote(kind), 2,
                             start_timeout=30.0)

    @user_errors_exit_2("job")
    def job():
        list(pool.map_unordered(lambda a, s: a.run.remote(s), [1, 2]))

    try:
        with pytest.raises(SystemExit) as e:
            job()
    finally:
        pool.close()
    assert e.value.code == code and pool.failures == (5 if kind == "die" else 0)
    assert capsys.readouterr().err.strip().splitlines()[-1] == line


def _start_refused(env: dict, capsys) -> str:
    """One worker started under ``env`` must stop the run with exit code 2: its line."""
    from jobs._cli import user_errors_exit_2
    pool = FaultTolerantPool(lambda: BadStart.options(
        num_cpus=0.25, runtime_env={"env_vars": env}).remote("ok"), 1, start_timeout=60.0)

    @user_errors_exit_2("job")
    def job():
        list(pool.map_unordered(lambda a, s: a.run.remote(s), [1]))

    try:
        with pytest.raises(SystemExit) as e:
            job()
    finally:
        pool.close()
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_gpu_worker_whose_jax_has_no_gpu_stops_the_run_with_one_line(local_ray, capsys):
    """A node set up with the CPU-only jax of pyproject.toml computed a GPU worker's cells on
    its CPU, with only JAX's warning, and they were filed as GPU cells. Here the worker gets a
    GPU worker's environment (no GPU is requested) on a JAX held to the CPU."""
    import socket

    from cluster.connect import worker_env
    line = _start_refused(dict(worker_env(0.25), JAX_PLATFORMS="cpu"), capsys)
    assert line == (
        f"job: error: a Ray worker on {socket.gethostname()} has a GPU share but JAX there "
        "computes on cpu; install jax with CUDA on the GPU nodes (pip install 'jax[cuda12]')")


def test_a_worker_with_other_library_code_than_the_driver_stops_the_run(local_ray, capsys):
    """Attached to a cluster outside `ray job submit`, a worker imports its node's own copy of
    the library; its cells would be stored under the driver's code version. Here the driver's
    digest it is given differs from the one it computes."""
    from cluster.connect import DRIVER_CODE_ENV, worker_env
    line = _start_refused(worker_env(0) | {DRIVER_CODE_ENV: "0" * 16}, capsys)
    assert " runs other causal_grpo code (" in line, line
    assert line.endswith(" than the driver (0000000000000000); submit the job with `ray job "
                         "submit --working-dir .` or install the driver's code on every node")


def test_a_worker_with_other_jax_settings_than_the_driver_stops_the_run(local_ray, capsys):
    """The driver's matmul precision at its default (None) has no JAX_* value to pass on, so a
    node's own JAX_DEFAULT_MATMUL_PRECISION reached the worker: cells computed otherwise,
    filed under the driver's key."""
    from cluster.connect import worker_env
    line = _start_refused(worker_env(0) | {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}, capsys)
    assert line.endswith(" computes with other JAX settings than the driver "
                         "(default_matmul_precision highest there, None on the driver); unset "
                         "that node's JAX_* environment variables or set the same on the "
                         "driver"), line


TINY = P.Phase1Config(
    curriculum=(P.Stage(sizes=(4,), d_pad=4, iterations=2, episodes=4),),
    graph_kind=GraphKind.ER, steps_per_episode=2, n_observational=10,
    grpo=grpo.GRPOConfig(group_size=4), eval_every=0, rollout_chunk=1)


def _curve(collect_fn):
    """Final params, per-iteration rewards, and the batch collected at iteration 0."""
    tr = P.Trainer(TINY, collect_fn)
    state = tr.initial_state()
    first_batch = jax.device_get(tr.collect_fn(0, state.params, tr.episode_keys(0))[0])
    rewards = []
    for it in range(TINY.iterations):
        state, m = tr.step(state, it)
        rewards.append(m["reward"])
    return state.params, rewards, first_batch


@pytest.fixture(scope="module")
def in_process_curve():
    return _curve(None)


def _same_curve(curve, reference):
    """Bit for bit: in-process and on any number of workers, each compiled call vmaps the same
    chunk of episodes (vmapping 4 episodes at once instead moved log-probabilities by 2e-4)."""
    params, rewards, batch = curve
    ref_params, ref_rewards, ref_batch = reference
    for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(ref_batch)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert rewards == ref_rewards
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_phase1_curve_on_one_worker_matches_in_process(local_ray, in_process_curve):
    with RolloutPool(TINY, 1) as pool:
        _same_curve(_curve(pool.collect), in_process_curve)


def test_phase1_curve_on_two_workers_survives_a_killed_actor(local_ray, in_process_curve):
    # One worker, undisturbed, is the test above; here two share the work and one of them is
    # killed while its first rollouts run: its replacement's share gives the same curve.
    with RolloutPool(TINY, 2) as pool:
        pids = ray.get([a.pid.remote() for a in pool.actors])
        timer = threading.Timer(0.3, lambda: os.kill(pids[1], signal.SIGKILL))
        timer.start()
        _same_curve(_curve(pool.collect), in_process_curve)
        timer.join()
        assert pool.pool.failures >= 1
