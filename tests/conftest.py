import os
import shutil
import signal
import tempfile

import pytest

from causal_grpo.jaxcache import enable_compilation_cache, pin_cpu_numerics

# XLA:CPU's older fusion emitters compile our programs in about 60% of the time (a Phase-2
# run of grpo_active and plugin_active on er10: 20.0 s of compiling -> 12.8 s, the same
# steps.csv byte for byte). Every process of a test inherits the flag; Ray workers get the
# driver's XLA flags (cluster.connect.worker_env).
_FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", "").split():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
# A runner started in the background (`cmd &` in a script) ignores SIGINT, and so would every
# process of the suite (Python installs its Ctrl-C handler only where SIGINT is not ignored):
# the tests of Ctrl-C need it as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# The CLIs' and the Ray workers' CPU numerics, set before any JAX computation of the session.
pin_cpu_numerics()
# Most of the suite's time is XLA compiling small programs run a few times: JAX's switch for
# that case halves it. Every process of a test (jobs run as subprocesses, Ray workers)
# inherits it, so the tests that compare processes compare like with like.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Tests run on the CPU and must not grab a GPU or phone home.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# One compilation cache for the session, never the user's own: the pytest processes (both
# xdist workers, which inherit the first process's directory) and every job and Ray worker they
# start write to it and read from it, so a program compiled once is loaded from disk elsewhere.
# The process that made the directory removes it.
_OWNER = "CAUSAL_GRPO_TEST_JAX_CACHE_OWNER"
if os.environ.get(_OWNER) is None:
    os.environ[_OWNER] = str(os.getpid())
    os.environ["CAUSAL_GRPO_JAX_CACHE"] = tempfile.mkdtemp(prefix="causal-grpo-test-jax-")
_JAX_CACHE = enable_compilation_cache()


def pytest_sessionfinish(session, exitstatus):
    if _JAX_CACHE and os.environ.get(_OWNER) == str(os.getpid()):
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test` runs two processes) the tests that start Ray (all in
    tests/cluster/) run in one process, one after another: local clusters on one machine
    share ports and /tmp/ray. Other tests are scheduled by module, so that a module's
    fixtures (a trained policy, a finished sweep) are built once."""
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if nodeid.startswith("tests/cluster/") else nodeid.split("::")[0]

    return RayTestsTogether(config, log)


def pytest_collection_modifyitems(config, items):
    # The scheduler above finds Ray tests by their directory: keep every one there.
    stray = [i.nodeid for i in items if i.get_closest_marker("ray")
             and not i.nodeid.startswith("tests/cluster/")]
    if stray:
        raise pytest.UsageError(f"tests marked 'ray' must live in tests/cluster/: {stray[:3]}")
