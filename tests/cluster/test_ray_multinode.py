"""A multi-node cluster on loopback (ray.cluster_utils.Cluster): a node removed mid-sweep."""

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from causal_grpo.sweep import plan_batches, run_batch  # noqa: E402
from cluster.sweep_driver import SweepPool  # noqa: E402
from test_ray_local import CFG, SOURCES, assert_same  # noqa: E402

pytestmark = pytest.mark.ray


def test_removing_a_node_mid_sweep_loses_nothing():
    reference = {b: run_batch(b, CFG, None, SOURCES) for b in plan_batches(CFG)}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    keep = cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        with SweepPool(CFG, SOURCES, None, 2) as pool:
            nodes = {ray.get(a.pid.remote()) for a in pool.actors}
            assert len(nodes) == 2
            results = {}
            for b, arrays in pool.run(plan_batches(CFG)):
                results[b] = arrays
                if len(results) == 1:
                    cluster.remove_node(doomed)
            assert pool.pool.failures >= 1            # the lost actor was noticed and replaced
        assert_same(results, reference)
        assert keep in cluster.list_all_nodes()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_gpu_shares_are_counted_as_ray_packs_them(monkeypatch):
    """A cold cluster (head without CPUs, no GPU node yet, as ray_cluster.yaml starts) is
    refused unless it autoscales; once a 1-GPU node is there (declared: Ray schedules by the
    count), 5 workers x 0.2 and 10 x 0.1 fit it as Ray packs them, 4 x 0.3 do not; each worker
    also needs a CPU on its GPU's node."""
    from causal_grpo.errors import UserError
    from cluster.connect import check_resources
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        monkeypatch.delenv("CAUSAL_GRPO_AUTOSCALING", raising=False)
        with pytest.raises(UserError, match="needs 32 CPUs; the Ray cluster has 0 .*"
                                            "set CAUSAL_GRPO_AUTOSCALING=1"):
            check_resources(0.25, 32)
        monkeypatch.setenv("CAUSAL_GRPO_AUTOSCALING", "1")
        check_resources(0.25, 32)
        monkeypatch.delenv("CAUSAL_GRPO_AUTOSCALING")
        cluster.add_node(num_cpus=16, num_gpus=1)
        cluster.wait_for_nodes()
        check_resources(0.2, 5)
        check_resources(0.1, 10)
        with pytest.raises(UserError, match="at most 3 workers"):
            check_resources(0.3, 4)
        with pytest.raises(UserError, match="more than any node has"):
            check_resources(2, 1)
        cluster.add_node(num_cpus=2, num_gpus=1)        # GPUs for 10 such workers, CPUs for 2
        cluster.wait_for_nodes()
        check_resources(0.1, 12)
        with pytest.raises(UserError, match="takes a CPU on its GPU's node: at most 12 workers"):
            check_resources(0.1, 13)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_cluster_with_token_authentication_is_named_as_such_in_one_line(tmp_path):
    """Each was a traceback (RAY_AUTH_MODE=token, no token) or ~20 s of Ray's retry lines and
    'Failed to connect' (no mode, a wrong token); the right token runs the job."""
    import secrets
    import shutil
    import subprocess
    import sys
    import tempfile

    from test_ray_jobs import ENV, RAY, ROOT, free_port

    token, port = secrets.token_hex(32), free_port()
    tmp = tempfile.mkdtemp(prefix="ra", dir="/tmp")      # AF_UNIX paths stay short
    env = dict(ENV, HOME=str(tmp_path), RAY_AUTH_MODE="token")    # no ~/.ray/auth_token
    r = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1",
                        "--include-dashboard=false", "--disable-usage-stats",
                        f"--temp-dir={tmp}"], env=dict(env, RAY_AUTH_TOKEN=token),
                       capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    try:
        def job(**client_env):
            run_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"} | client_env
            return subprocess.run(
                [sys.executable, "-m", "jobs.two_phase_training", "--scm-type", "easy",
                 "--methods", "random_active", "--seeds", "1", "--n-observational", "5",
                 "--n-interventions", "1", "--num-workers", "1", "--quiet", "--no-plots",
                 "--address", f"127.0.0.1:{port}", "--output-dir",
                 str(tmp_path / f"o{len(client_env)}{secrets.token_hex(2)}")],
                env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=300)

        for client_env, needle in (
                ({}, "uses token authentication: set RAY_AUTH_MODE=token"),
                ({"RAY_AUTH_MODE": "token"}, "no token for the Ray cluster"),
                ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused this machine's")):
            r = job(**client_env)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
        r = job(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_job_on_its_own_local_ray_writes_nothing_to_stderr(tmp_path):
    """Ray's notice that a local cluster enables token authentication by default was a line
    on stderr in every job (the other tests set RAY_AUTH_MODE=disabled)."""
    import subprocess
    import sys

    from test_ray_jobs import ENV, ROOT

    env = {k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"} | {"HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "jobs.two_phase_training", "--scm-type", "easy",
                        "--methods", "random_active", "--seeds", "1", "--n-observational", "5",
                        "--n-interventions", "1", "--num-workers", "1", "--quiet", "--no-plots",
                        "--output-dir", str(tmp_path / "out")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]


def test_a_local_ray_is_a_new_one_not_the_cluster_named_in_rays_temp_dir():
    """Without an address a job starts its own Ray. ``ray.init()`` without one first attached
    to the cluster named in Ray's temp dir (``ray_current_cluster``, left by another job's
    ``ray start``) and, where that file was stale, retried for minutes, logging."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from test_ray_jobs import ENV, ROOT

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")     # short: Ray's socket paths
    try:
        os.makedirs(os.path.join(tmp, "ray"))
        with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write("127.0.0.1:1\n")                      # nothing listens there
        code = ("import ray; from cluster.connect import connect; "
                "print(connect(None, 1), ray.cluster_resources()['CPU'])")
        r = subprocess.run([sys.executable, "-c", code], env=dict(ENV, RAY_TMPDIR=tmp), cwd=ROOT,
                           capture_output=True, text=True, timeout=150)
        assert r.returncode == 0 and r.stdout.split() == ["True", "1.0"], r.stderr[-2000:]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_local_ray_counts_the_cpus_ray_detects_not_the_hosts(monkeypatch):
    """It was started with os.cpu_count(), which ignores a container's CPU quota (Ray's own
    count respects it), so --num-workers could oversubscribe the quota."""
    import os

    from ray._private.utils import get_num_cpus

    from cluster.connect import connect
    detected = get_num_cpus()
    if detected == 64:
        pytest.skip("this machine has the 64 CPUs the test pretends the host has")
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    try:
        assert connect() is True
        assert ray.cluster_resources()["CPU"] == detected
    finally:
        ray.shutdown()


def test_the_ray_benchmark_refuses_too_many_workers_before_measuring(tmp_path):
    """It found out inside the pool, after the in-process and smaller measurements (minutes),
    and named --num-workers, a flag it does not have."""
    import subprocess
    import sys
    import time

    from test_ray_jobs import ENV, ROOT

    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "ray", "--workers", "0,1000",
                        "--seconds", "30"], env=ENV, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "--workers 1000 needs 1000 CPUs" in lines[0] and time.time() - t0 < 60
