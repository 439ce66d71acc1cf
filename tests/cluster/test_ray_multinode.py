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
        with pytest.raises(UserError, match="needs 32 CPUs; the Ray cluster has 0"):
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
