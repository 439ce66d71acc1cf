"""The jobs against real Ray processes: resume after the driver is killed, ray job submit,
bad cluster input, and the cluster-launcher config."""

import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.ray

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)      # the venv's ray CLI and python, whatever PATH says
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", JAX_PLATFORMS="cpu",
           PYTHONUNBUFFERED="1", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
RAY = os.path.join(BIN, "ray")
ENV.pop("RAY_ADDRESS", None)
# 24 batches of 2 seeds on 8-variable graphs: long enough (seconds) to kill the driver mid-way.
SWEEP = ["--scm-type", "medium,er8", "--methods", "random_active,uncertainty_active",
         "--seeds", "12", "--batch-size", "2", "--n-observational", "20", "--n-interventions", "25",
         "--no-plots", "--quiet"]
N_BATCHES = 24


def py(*args, **kw):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=kw.pop("env", ENV),
                          capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cell_files(out):
    root = os.path.join(out, "cells")
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs
            if f.endswith(".npz") and not f.startswith(".")}


def test_killed_driver_resumes_without_recomputing(tmp_path):
    ref = tmp_path / "ref"
    r = py("jobs.two_phase_training", *SWEEP, "--output-dir", str(ref))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.two_phase_training", *SWEEP,
                             "--num-workers", "1", "--output-dir", str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(cell_files(out)) < 2:
        assert proc.poll() is None, "driver ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)       # the driver and the Ray it started
    proc.wait()
    before = cell_files(out)
    assert 2 <= len(before) < N_BATCHES
    assert not (out / "steps.csv").exists()
    r = py("jobs.two_phase_training", *SWEEP, "--num-workers", "1", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    after = cell_files(out)
    assert len(after) == N_BATCHES
    assert all(after[p] == m for p, m in before.items())      # finished cells were not redone
    pd.testing.assert_frame_equal(pd.read_csv(out / "steps.csv"), pd.read_csv(ref / "steps.csv"))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    port, dash = free_port(), free_port()
    # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes (pytest-xdist's
    # base temp directory alone takes about 40).
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    r = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2",
                        "--include-dashboard=true", f"--dashboard-port={dash}",
                        "--dashboard-host=127.0.0.1", "--disable-usage-stats",
                        f"--temp-dir={tmp}"], env=ENV, capture_output=True, text=True,
                       timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    try:
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_job_submit_runs_the_phase2_job(ray_head, tmp_path):
    """Submitted with environment variables of its own (one the job also sets for its actors):
    Ray refuses a driver's runtime_env that shares a key with the job's."""
    _, dashboard = ray_head
    out = tmp_path / "submitted"
    env_json = '{"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1"}}'
    r = subprocess.run([RAY, "job", "submit", "--address", dashboard, "--working-dir", ".",
                        "--runtime-env-json", env_json, "--", sys.executable, "-m",
                        "jobs.two_phase_training", "--scm-type", "easy",
                        "--methods", "random_active", "--seeds", "2", "--n-observational", "10",
                        "--n-interventions", "3", "--num-workers", "1", "--no-plots", "--quiet",
                        "--output-dir", str(out)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "succeeded" in r.stdout
    steps = pd.read_csv(out / "steps.csv")
    assert len(steps) == 2 * 4 and (out / "phase2_result_easy.pkl").exists()


def test_attaching_via_address_uses_the_running_cluster(ray_head, tmp_path):
    address, _ = ray_head
    r = py("jobs.two_phase_training", "--scm-type", "easy", "--methods", "random_active",
           "--seeds", "2", "--n-observational", "10", "--n-interventions", "3", "--quiet",
           "--no-plots", "--num-workers", "1", "--address", address,
           "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr[-2000:]


def test_bad_cluster_input_fails_fast_with_one_line(ray_head, tmp_path):
    address, _ = ray_head
    t0 = time.time()
    r = py("jobs.two_phase_training", "--scm-type", "easy", "--seeds", "2", "--num-workers", "1",
           "--address", f"127.0.0.1:{free_port()}", "--output-dir", str(tmp_path / "a"))
    assert r.returncode == 2 and "cannot reach the Ray cluster" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and time.time() - t0 < 60
    assert not (tmp_path / "a").exists()      # nor its cells/ made before Ray was reached
    with socket.socket() as other:        # something that listens but is not Ray
        other.bind(("127.0.0.1", 0))
        other.listen()
        for not_ray in (f"127.0.0.1:{other.getsockname()[1]}",
                        f"ray://127.0.0.1:{other.getsockname()[1]}"):
            t0 = time.time()
            r = py("jobs.two_phase_training", "--scm-type", "easy", "--seeds", "2",
                   "--num-workers", "1", "--address", not_ray, "--output-dir", str(tmp_path / "c"))
            assert r.returncode == 2 and "does not answer as a Ray" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and time.time() - t0 < 60
            assert not (tmp_path / "c").exists()
    # (Malformed --gpus-per-worker values need no cluster: tests/integration/test_bad_input.py.)
    r = py("jobs.two_phase_training", "--scm-type", "easy", "--seeds", "2", "--num-workers", "1",
           "--address", address, "--gpus-per-worker", "1", "--output-dir", str(tmp_path / "b"))
    assert r.returncode == 2 and "--gpus-per-worker" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    r = py("jobs.train_grpo", "--output-dir", str(tmp_path / "d"), "--num-workers", "1",
           "--address", address, "--gpus-per-worker", "1")
    assert r.returncode == 2 and "--gpus-per-worker" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = py("jobs.train_grpo", "--output-dir", str(blocker), "--num-workers", "1",
           "--address", address)
    assert r.returncode == 2 and "output" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ray_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config
    with open(os.path.join(ROOT, "ray_cluster.yaml")) as f:
        cfg = yaml.safe_load(f)
    validate_config(prepare_config(cfg))
    import ray
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    broken = dict(cfg, available_node_types={"head": cfg["available_node_types"]["head"]},
                  head_node_type="nonexistent")
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


TALKER = """
import sys, time
sys.stdout.reconfigure(line_buffering=True)
import ray
from cluster.connect import connect, worker_env
from cluster.pool import Worker, worker_actor

@worker_actor
class Talker(Worker):
    def talk(self):
        print("hello from the actor")
        time.sleep(60)

connect(num_cpus=1)
ref = Talker.options(runtime_env={"env_vars": worker_env(0)}).remote().talk.remote()
print("driver waiting")
ray.get(ref)
"""


def test_an_actors_print_reaches_the_drivers_output_as_it_happens():
    env = dict(ENV, PYTHONPATH=ROOT)
    env.pop("PYTHONUNBUFFERED")          # Ray's workers flush their lines themselves
    proc = subprocess.Popen([sys.executable, "-c", TALKER], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        seen = {}
        for line in proc.stdout:
            for what in ("driver waiting", "hello from the actor"):
                if what in line:
                    seen[what] = time.time()
            if len(seen) == 2:
                break
        assert seen["hello from the actor"] - seen["driver waiting"] < 40, seen
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
