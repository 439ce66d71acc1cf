"""Connecting to Ray: one helper used by every job.

* ``--address`` given, or ``RAY_ADDRESS`` set (as inside ``ray job submit``): attach to that
  cluster, after a quick check that a Ray head answers there (Ray itself retries for minutes).
* otherwise: start a new local Ray with this machine's CPUs (laptop mode; ``local_mode`` no
  longer exists in Ray 2.60), never one that another job started on the machine.

CPU-only workers run JAX on the CPU (``JAX_PLATFORMS=cpu``: since Ray 2.x, ``num_gpus=0`` no
longer hides the GPUs). GPU workers get a fractional ``num_gpus`` and a JAX memory fraction
matching their share, so several can share one card; a driver whose workers take GPU shares
allocates GPU memory only as it needs it (``jobs._cli.gpus_per_worker``), instead of JAX's
default 75% of the card its workers share. What actors print reaches the driver's output
(Ray's log monitor, ``log_to_driver``), and so a job's log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from urllib.parse import urlparse

from causal_grpo.errors import UserError

# The driver's library digest (version.library_id), which every worker checks its own against.
DRIVER_CODE_ENV = "CAUSAL_GRPO_DRIVER_CODE"
DRIVER_RELEASES_ENV = "CAUSAL_GRPO_DRIVER_JAX"
DRIVER_NUMERICS_ENV = "CAUSAL_GRPO_DRIVER_NUMERICS"
# Set for a worker with a GPU share, which then refuses to compute without one.
GPU_WORKER_ENV = "CAUSAL_GRPO_GPU_WORKER"
# A GPU worker's share of its card's memory. jaxlib also reads a newer name and refuses to
# start where both are set, so a GPU worker drops the newer one a node may set (cluster.pool).
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
NEWER_MEM_FRACTION_ENV = "XLA_CLIENT_MEM_FRACTION"
CPU_ENV = {"JAX_PLATFORMS": "cpu", "RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1"}


def worker_env(gpus_per_worker: float) -> dict[str, str]:
    """Environment variables of a worker actor. A CPU worker gets the driver's XLA flags with
    the pinned numerics (jaxcache.pin_cpu_numerics; N actors on N cores share them): XLA flags
    can change how results are computed, and a worker must compute as the driver does."""
    from causal_grpo.jaxcache import ENV_VAR, numerics, numerics_env, pin_cpu_numerics, releases
    from causal_grpo.version import library_id
    if gpus_per_worker <= 0:
        env = dict(CPU_ENV, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
        pin_cpu_numerics(env)
    else:
        # Its allocator's limit: 0.9 of its Ray share (rounded down), so that the workers
        # Ray packs onto one card never ask for more than 90% of it together; a batch beyond
        # a worker's limit is refused before it runs (sweep.check_program_memory).
        env = {"RAY_USAGE_STATS_ENABLED": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
               MEM_FRACTION_ENV: f"{math.floor(0.9e6 * min(gpus_per_worker, 1.0)) / 1e6:.6f}",
               "TQDM_DISABLE": "1", GPU_WORKER_ENV: "1"}
    if ENV_VAR in os.environ:   # else each machine's own per-user default
        env[ENV_VAR] = os.environ[ENV_VAR]
    env |= numerics_env()      # the driver's, jax.config.update included
    env[DRIVER_CODE_ENV] = library_id()
    env[DRIVER_RELEASES_ENV] = releases()
    env[DRIVER_NUMERICS_ENV] = json.dumps(numerics(), sort_keys=True)
    return env


AUTH_TOKEN_HELP = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """One line, quickly, when ``address`` is not a Ray cluster: Ray itself retries for minutes
    and logs a warning every few seconds (a closed port, a host that does not answer, a port
    where something else listens)."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    try:
        parsed = urlparse(address if "://" in address else f"tcp://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:                  # a port out of range or not a number, a bad IPv6 host
        host = port = None
    if host is None or port is None:
        raise UserError(f"Ray address '{address}' must look like host:port or ray://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e})") from None
    # Something listens: ask it what a Ray head (GCS, or the Ray Client server for ray://)
    # answers, over a channel of our own that logs nothing.
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import (gcs_service_pb2, gcs_service_pb2_grpc, ray_client_pb2,
                                    ray_client_pb2_grpc)

    with init_grpc_channel(f"{host}:{port}") as channel:
        try:
            if client:
                ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                    ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING),
                    timeout=timeout)
            else:
                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAUTHENTICATED,
                                grpc.StatusCode.PERMISSION_DENIED):
                what = "Ray Client server" if client else "Ray cluster (GCS)"
                raise UserError(f"{address} does not answer as a {what} "
                                f"({e.code().name.lower()})") from None
            # A cluster with token authentication that refused the call (the channel carries
            # the driver's token under RAY_AUTH_MODE=token): Ray would retry for ~20 s, then
            # blame the address.
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                    raise UserError(f"the Ray cluster at {address} refused this machine's "
                                    f"token ({AUTH_TOKEN_HELP})") from None
                raise UserError(f"the Ray cluster at {address} uses token authentication: "
                                f"set RAY_AUTH_MODE=token and its token ({AUTH_TOKEN_HELP})"
                                ) from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Attach to or start Ray; returns True when this call started a local Ray."""
    import warnings

    import ray

    # Ray launches its processes by fork+exec, which is safe after JAX started its threads.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            _check_reachable(address)
            # No runtime_env here: inside `ray job submit` Ray merges it with the job's, and
            # one key in both is an error. The actors get theirs from worker_env.
            ray.init(address=address, logging_level=logging.WARNING)
        except ray.exceptions.AuthenticationError:
            raise UserError(f"no token for the Ray cluster at {address} was found "
                            f"({AUTH_TOKEN_HELP})") from None
        except (ConnectionError, RuntimeError) as e:
            raise UserError(f"cannot connect to the Ray cluster at {address}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        return False
    # This job's own local cluster: Ray enables token authentication on it by default and
    # says so on stderr at every start, one line of every job's output that asks nothing of
    # the user (RAY_AUTH_MODE, when set, is respected without it).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    # num_cpus None: the CPUs as Ray counts them, a container's quota included
    # (os.cpu_count() sees the host's). address "local": without it Ray first attaches to the
    # cluster named in its temp dir's ray_current_cluster (another job's `ray start`), or
    # retries for minutes where that file is stale.
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as e:
        raise UserError(f"cannot start a local Ray: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return True


def check_gpus_per_worker(gpus_per_worker: float) -> None:
    """Before Ray starts: a GPU share is 0, a finite number in [1e-4, 1] (Ray's unit is
    1e-4) or a whole number."""
    if not (0 <= gpus_per_worker < math.inf):
        raise UserError(f"--gpus-per-worker must be a finite number >= 0, got {gpus_per_worker}")
    if 0 < gpus_per_worker < 1e-4:
        raise UserError(f"--gpus-per-worker must be 0 or at least 0.0001 (Ray's unit), "
                        f"got {gpus_per_worker}")
    if gpus_per_worker > 1 and gpus_per_worker != int(gpus_per_worker):
        raise UserError(f"--gpus-per-worker above 1 must be a whole number, got {gpus_per_worker}")


def check_resources(gpus_per_worker: float, num_workers: int,
                    flag: str = "--num-workers") -> None:
    """Fail with one line, rather than hang, when the cluster cannot host the workers
    (``flag``: the option that asked for them)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes)
    if num_workers > cpus and not autoscaling():
        raise UserError(f"{flag} {num_workers} needs {num_workers} CPUs; the Ray cluster "
                        f"has {cpus:g} (where it adds nodes as needed, set "
                        f"CAUSAL_GRPO_AUTOSCALING=1)")
    if gpus_per_worker <= 0:
        return
    if autoscaling():   # GPU nodes may not exist yet (ray_cluster.yaml's start at 0 of them)
        return
    per_node = [n.get("Resources", {}).get("GPU", 0.0) for n in nodes]
    node_cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in nodes]
    total = sum(per_node)
    if gpus_per_worker > max(per_node, default=0.0):
        raise UserError(f"--gpus-per-worker {gpus_per_worker} is more than any node has "
                        f"(largest node: {max(per_node, default=0.0):g} GPUs, cluster: {total:g})")
    # In Ray's own units (1e-4 of a GPU): in floats 1 // 0.2 is 4, and Ray packs 5 such workers.
    share = round(gpus_per_worker * 10_000)
    by_gpus = [round(g * 10_000) // share for g in per_node]
    fit = sum(by_gpus)
    if fit < num_workers:
        raise UserError(f"{num_workers} workers x {gpus_per_worker} GPUs do not fit the cluster's "
                        f"{total:g} GPUs (at most {fit} workers)")
    # Each worker also takes one CPU, on the node of its GPU share.
    fit = sum(min(n, int(c)) for n, c in zip(by_gpus, node_cpus))
    if fit < num_workers:
        raise UserError(f"{num_workers} workers x {gpus_per_worker} GPUs fit the cluster's GPUs, "
                        f"but each also takes a CPU on its GPU's node: at most {fit} workers")


def autoscaling() -> bool:
    """True when the cluster may add nodes (then pending GPU workers will be scheduled)."""
    return os.environ.get("CAUSAL_GRPO_AUTOSCALING", "0") == "1"


def shutdown_if_started(started: bool) -> None:
    import ray
    if started and ray.is_initialized():
        ray.shutdown()
