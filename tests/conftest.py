import os
import shutil
import tempfile

import pytest

# Tests run on the CPU and must not grab a GPU or phone home.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# One compilation cache for the session (jobs run as subprocesses and Ray workers share it),
# never the user's own.
_JAX_CACHE = tempfile.mkdtemp(prefix="causal-grpo-test-jax-")
os.environ["CAUSAL_GRPO_JAX_CACHE"] = _JAX_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_JAX_CACHE, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)     # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (`make test` runs two processes) every test that starts Ray runs in
    # one process, one after another: local clusters on one machine share ports and /tmp/ray.
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
