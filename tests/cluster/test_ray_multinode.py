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
