"""A fault-tolerant pool of Ray actors: our own ``ray.wait`` loop.

Ray's ``ActorPool`` drops dead actors without resubmitting their work. Here each work item is
tracked until its result arrives, and an actor is replaced only when it is dead or has stopped
answering, never because its work takes long (a d = 15 batch on a busy machine can take any
time):

* dead: Ray reports the actor (or its node) lost; its in-flight item goes back to the queue;
* not answering: a busy actor answers ``pid()`` from a thread of its own while its batch runs
  (see :class:`Worker`); one that leaves it unanswered for ``no_progress_timeout`` seconds
  (a stopped or frozen process, a cut-off node) is killed and its item resubmitted.

A replacement receives work only once it has answered ``pid()``, so one that cannot be
scheduled (its node is gone, the cluster is full) never holds work hostage. The run stops with
:class:`PoolFailure` when an item has lost its worker ``max_attempts`` times (a batch that kills
every process it runs on), when no actor can be started for ``start_timeout`` seconds, when
``max_attempts`` actors per slot in a row die before they answer, or at once when a
constructor raises (a module missing on a node, a bad argument: no replacement would start
either; a :class:`UserError` stays one, exit code 2).

Errors raised by our own code inside an actor (``RayTaskError``) are *not* retried: a bug or a
NaN must crash the run, loudly.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import os
import re
import time
from typing import Any, Callable, Iterator, Sequence

import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError,
                            ObjectLostError, OutOfMemoryError, OwnerDiedError, RayActorError,
                            RayTaskError, RuntimeEnvSetupError, WorkerCrashedError)

from causal_grpo.errors import RunFailure, UserError

log = logging.getLogger(__name__)

# Ray's memory monitor kills a worker when the node runs out of memory: a lost worker too (and
# a batch that needs more memory than a node has stops the run after max_attempts).
SYSTEM_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError,
                   ObjectLostError, OwnerDiedError, GetTimeoutError, OutOfMemoryError)


class PoolFailure(RunFailure):
    """A batch keeps losing its workers, or none can be started; the run stops."""


def _start_failure(e: Exception) -> Exception | None:
    """The error that stops the run when an actor failed to start with ``e``, or None when a
    replacement may start (its process or node was lost)."""
    if isinstance(e, RuntimeEnvSetupError):
        return PoolFailure(f"a worker's runtime environment could not be set up: "
                           f"{str(e).strip().splitlines()[-1]}")
    if isinstance(e, ActorDiedError) and e.actor_init_failed:
        # Ray's message ends with the constructor's exception as "module.Class: text"; the
        # exception itself does not travel with it. Our UserErrors (SCMError, CheckpointError
        # and the rest subclass it) stop the run as bad input.
        last = str(e).strip().splitlines()[-1]
        named = re.fullmatch(r"(causal_grpo(?:\.\w+)*)\.(\w+): (.*)", last, re.DOTALL)
        if named:
            try:
                cls = getattr(importlib.import_module(named[1]), named[2], None)
            except ImportError:
                cls = None
            if isinstance(cls, type) and issubclass(cls, UserError):
                return UserError(named[3])
        return PoolFailure(f"a worker failed to start: {last}")
    return None


class Worker:
    """Base class of the pool's actors (decorate subclasses with :func:`worker_actor`).

    ``pid()`` runs in its own concurrency group, so it answers while a batch runs: the
    readiness ping and the liveness heartbeat. The constructor turns on the JAX compilation
    cache, so a replacement or a second worker on a machine loads what another compiled, and
    refuses to work with library code or jax releases other than the driver's
    (connect.DRIVER_CODE_ENV, DRIVER_RELEASES_ENV), or with a GPU share but no GPU for JAX.
    """

    def __init__(self):
        import socket

        from causal_grpo.jaxcache import enable_compilation_cache, numerics, releases
        from causal_grpo.version import library_id
        from cluster.connect import (DRIVER_CODE_ENV, DRIVER_NUMERICS_ENV, DRIVER_RELEASES_ENV,
                                     GPU_WORKER_ENV, NEWER_MEM_FRACTION_ENV)

        # Attached to a cluster outside `ray job submit`, workers import the nodes' installed
        # copy: cells it computed would be stored under the driver's code version.
        driver, own = os.environ.get(DRIVER_CODE_ENV), library_id()
        if driver is not None and driver != own:
            raise UserError(f"a Ray worker on {socket.gethostname()} runs other causal_grpo code "
                            f"({own}) than the driver ({driver}); submit the job with `ray job "
                            "submit --working-dir .` or install the driver's code on every node")
        # Cells are keyed by the driver's jax release: a node with another computes others.
        driver, own = os.environ.get(DRIVER_RELEASES_ENV), releases()
        if driver is not None and driver != own:
            raise UserError(f"a Ray worker on {socket.gethostname()} runs {own}, the driver "
                            f"{driver}; install the driver's releases on every node")
        # The driver's JAX settings travel as JAX_* variables, but a setting at its default has
        # none that could override the node's own (a JAX_DEFAULT_MATMUL_PRECISION in a node's
        # environment): its cells would be computed otherwise and filed under the driver's key.
        driver, own = json.loads(os.environ.get(DRIVER_NUMERICS_ENV, "null")), numerics()
        if driver is not None and driver != own:
            differ = "; ".join(f"{k} {own.get(k)} there, {driver.get(k)} on the driver"
                               for k in sorted(own.keys() | driver.keys())
                               if own.get(k) != driver.get(k))
            raise UserError(f"a Ray worker on {socket.gethostname()} computes with other JAX "
                            f"settings than the driver ({differ}); unset that node's JAX_* "
                            "environment variables or set the same on the driver")
        # A GPU share on a node whose jax lacks CUDA computes on its CPU (JAX only warns), and
        # its cells would be filed as a GPU's.
        if os.environ.get(GPU_WORKER_ENV) == "1":
            # Before JAX starts: its share of the card is the driver's (cluster.connect).
            os.environ.pop(NEWER_MEM_FRACTION_ENV, None)
            import jax
            if jax.default_backend() != "gpu":
                raise UserError(f"a Ray worker on {socket.gethostname()} has a GPU share but JAX "
                                f"there computes on {jax.default_backend()}; install jax with "
                                "CUDA on the GPU nodes (pip install 'jax[cuda12]')")
        enable_compilation_cache()

    @ray.method(concurrency_group="heartbeat")
    def pid(self) -> int:
        return os.getpid()


def worker_actor(cls: type) -> Any:
    """``ray.remote`` for a :class:`Worker` subclass: no automatic restarts (the pool replaces
    actors itself and resubmits their work), one heartbeat thread beside the work thread."""
    return ray.remote(max_restarts=0, concurrency_groups={"heartbeat": 1})(cls)


class FaultTolerantPool:
    """Run items on ``size`` actors made by ``make_actor()``; yields ``(index, result)``.

    Args:
      make_actor: creates one actor handle of a :class:`Worker` (called again to replace one).
      size: number of actors.
      no_progress_timeout: seconds a busy actor may leave its heartbeat unanswered before it
        counts as hung and is replaced.
      heartbeat_interval: seconds between heartbeats to a busy actor.
      start_timeout: seconds without any usable actor before :class:`PoolFailure`.
      max_attempts: an item whose worker was lost this many times stops the run.
    """

    def __init__(self, make_actor: Callable[[], Any], size: int,
                 no_progress_timeout: float = 120.0, heartbeat_interval: float = 5.0,
                 start_timeout: float = 900.0, max_attempts: int = 3):
        self.make_actor = make_actor
        self.actors = [make_actor() for _ in range(size)]
        self.pings = {a.pid.remote(): i for i, a in enumerate(self.actors)}
        self.idle: collections.deque[int] = collections.deque()
        self.no_progress_timeout = no_progress_timeout
        self.heartbeat_interval = heartbeat_interval
        self.start_timeout = start_timeout
        self.max_attempts = max_attempts
        self.failures = 0
        self.start_failures = 0          # actors in a row that died before answering
        self.last_start = time.time()   # a ready actor, a result, or a replaced busy actor

    def _replace(self, i: int, reason: str, restart_clock: bool = True) -> None:
        self.failures += 1
        log.warning("worker %d lost (%s); replacing it and resubmitting its work", i, reason)
        try:
            ray.kill(self.actors[i], no_restart=True)
        except SYSTEM_FAILURES + (ValueError,):
            pass
        self.actors[i] = self.make_actor()
        self.pings[self.actors[i].pid.remote()] = i
        if restart_clock:
            self.last_start = time.time()

    def map_unordered(self, submit: Callable[[Any, Any], "ray.ObjectRef"],
                      items: Sequence[Any], describe: Callable[[Any], str] = str
                      ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` for every item, each exactly once, as they finish.

        ``submit(actor, item)`` starts the remote call and returns its ObjectRef;
        ``describe(item)`` names the item in the message that stops the run.
        """
        queue = collections.deque(range(len(items)))
        attempts = collections.Counter()
        inflight: dict[Any, tuple[int, int]] = {}     # result ref -> (item, actor)
        beats: dict[int, Any] = {}                    # busy actor -> its unanswered heartbeat
        sent: dict[int, float] = {}                   # busy actor -> when that one was sent
        # busy actor -> when the oldest heartbeat it has not answered was sent (a heartbeat
        # that fails, e.g. ActorUnavailableError from a cut-off node, is no answer)
        silent: dict[int, float] = {}

        def finish(ref: Any) -> tuple[int, int]:
            k, i = inflight.pop(ref)
            beats.pop(i, None)
            silent.pop(i, None)
            del sent[i]
            return k, i

        def lost(ref: Any, reason: str) -> None:
            k, i = finish(ref)
            attempts[k] += 1
            if attempts[k] >= self.max_attempts:
                raise PoolFailure(f"batch {describe(items[k])} lost its worker "
                                  f"{attempts[k]} times in a row (last: {reason}); stopping")
            queue.appendleft(k)
            self._replace(i, reason)

        self.last_start = time.time()
        while queue or inflight:
            while queue and self.idle:
                i = self.idle.popleft()
                k = queue.popleft()
                inflight[submit(self.actors[i], items[k])] = (k, i)
                sent[i] = time.time()
            refs = list(inflight) + list(self.pings) + list(beats.values())
            ready, _ = ray.wait(refs, num_returns=1, timeout=min(1.0, self.heartbeat_interval))
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            answers = {ref: i for i, ref in beats.items()}
            # What stops the run waits until the other results that are ready have been
            # yielded: finished batches are stored, not recomputed by the rerun.
            stop: BaseException | None = None
            for ref in ready:
                if ref in self.pings:
                    i = self.pings.pop(ref)
                    try:
                        ray.get(ref, timeout=60)
                    except SYSTEM_FAILURES + (RuntimeEnvSetupError,) as e:
                        stop = _start_failure(e)
                        if stop is not None:
                            raise stop from None
                        self.start_failures += 1
                        if self.start_failures >= self.max_attempts * len(self.actors):
                            raise PoolFailure(f"{self.start_failures} workers in a row died "
                                              f"before they started (last: "
                                              f"{type(e).__name__}); stopping") from None
                        self._replace(i, f"did not start ({type(e).__name__})",
                                      restart_clock=False)
                        continue
                    self.idle.append(i)
                    self.start_failures = 0
                    self.last_start = time.time()
                elif ref in answers:      # (a dead actor's result ref says so, below)
                    i = answers[ref]
                    beats.pop(i, None)
                    try:
                        ray.get(ref, timeout=0)
                    except SYSTEM_FAILURES:
                        continue              # silent stays; the next heartbeat follows
                    silent.pop(i, None)
                elif ref in inflight:
                    k, i = inflight[ref]
                    try:
                        result = ray.get(ref, timeout=60)
                    except SYSTEM_FAILURES as e:
                        try:
                            lost(ref, type(e).__name__)
                        except PoolFailure as failure:
                            stop = stop or failure
                        continue
                    except RayTaskError as e:      # the batch's own error: not retried
                        stop = stop or e
                        continue
                    finish(ref)
                    self.idle.append(i)
                    self.last_start = time.time()
                    yield k, result
            if stop is not None:
                raise stop
            now = time.time()
            for ref, (k, i) in list(inflight.items()):
                if i not in beats and now - sent[i] >= self.heartbeat_interval:
                    beats[i], sent[i] = self.actors[i].pid.remote(), now
                    silent.setdefault(i, now)
                # Answered while we were away (yielding to the caller) is answered.
                elif (i in silent and now - silent[i] > self.no_progress_timeout
                      and not (i in beats and ray.wait([beats[i]], timeout=0)[0])):
                    lost(ref, f"no heartbeat answer for {now - silent[i]:.0f}s")
            if not inflight and not self.idle and now - self.last_start > self.start_timeout:
                raise PoolFailure(f"no worker could be started for {self.start_timeout:.0f}s "
                                  "(does the cluster have free CPUs/GPUs?)")

    def close(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except SYSTEM_FAILURES + (ValueError,):
                pass
        self.actors = []


class ActorGroup:
    """Connect to Ray, check resources, and keep a :class:`FaultTolerantPool` of one actor class.

    ``make_args()`` returns the actor's constructor arguments (called for every replacement).
    Usable as a context manager; shuts down a local Ray it started.
    """

    def __init__(self, actor_cls, make_args: Callable[[], tuple], num_workers: int,
                 address: str | None = None, gpus_per_worker: float = 0.0, **pool_kwargs):
        from cluster.connect import (autoscaling, check_gpus_per_worker, check_resources,
                                     connect, worker_env)
        check_gpus_per_worker(gpus_per_worker)
        self.started = connect(address)
        check_resources(gpus_per_worker, num_workers)
        if autoscaling():   # a new GPU node boots and pulls its image before any actor starts
            pool_kwargs.setdefault("start_timeout", 3600.0)
        opts = {"num_cpus": 1, "num_gpus": gpus_per_worker,
                "runtime_env": {"env_vars": worker_env(gpus_per_worker)}}
        self.pool = FaultTolerantPool(lambda: actor_cls.options(**opts).remote(*make_args()),
                                      num_workers, **pool_kwargs)

    @property
    def actors(self):
        return self.pool.actors

    def close(self) -> None:
        from cluster.connect import shutdown_if_started
        self.pool.close()
        shutdown_if_started(self.started)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
