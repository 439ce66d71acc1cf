"""A fault-tolerant pool of Ray actors: our own ``ray.wait`` loop.

Ray's ``ActorPool`` drops dead actors without resubmitting their work. Here each work item is
tracked until its result arrives:

* when an actor (or its node) dies, its in-flight item goes back to the queue and the actor is
  replaced; a replacement receives work only once it has answered a ping, so one that cannot
  be scheduled (its node is gone, the cluster is full) never holds work hostage;
* an item that outlives its deadline has its actor killed and is resubmitted the same way;
* if no actor can be started at all for ``first_timeout`` seconds, or actors keep dying, the
  run stops with :class:`PoolFailure` instead of waiting forever.

Errors raised by our own code inside an actor (``RayTaskError``) are *not* retried: a bug or a
NaN must crash the run, loudly.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Iterator, Sequence

import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError,
                            ObjectLostError, OwnerDiedError, RayActorError, WorkerCrashedError)

log = logging.getLogger(__name__)

SYSTEM_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError,
                   ObjectLostError, OwnerDiedError, GetTimeoutError)


class PoolFailure(RuntimeError):
    """Workers kept dying or could not be started; the run stops instead of waiting forever."""


class FaultTolerantPool:
    """Run items on ``size`` actors made by ``make_actor()``; yields ``(index, result)``.

    Actors must have a cheap ``pid()`` method (the readiness ping).

    Args:
      make_actor: creates one actor handle (called again to replace a lost one).
      size: number of actors.
      first_timeout: how long the pool waits with no usable actor before giving up, and the
        least deadline (s) of an actor's first item of a program (it includes compilation);
        once some actor has finished a first item of the program, that deadline is at least
        ``timeout_factor`` times its duration (a d = 15 Phase-2 batch can take longer than
        any fixed limit on a slow machine).
      timeout_factor, min_timeout: deadline of an item whose program the actor has already
        run = max(min_timeout, factor * slowest warm item of that program).
      max_failures: total actor losses tolerated before :class:`PoolFailure`.
    """

    def __init__(self, make_actor: Callable[[], Any], size: int, first_timeout: float = 900.0,
                 timeout_factor: float = 10.0, min_timeout: float = 120.0,
                 max_failures: int | None = None):
        self.make_actor = make_actor
        self.actors = [make_actor() for _ in range(size)]
        self.pings = {a.pid.remote(): i for i, a in enumerate(self.actors)}
        # Programs (a Phase-1 stage, a Phase-2 SCM x method) each actor has finished an item
        # of: the next one is not compiled again. Warmth and timing are per program because a
        # new stage compiles for minutes and a d = 15 item takes far longer than a d = 6 one.
        self.warm: list[set] = [set() for _ in range(size)]
        self.idle: collections.deque[int] = collections.deque()
        self.first_timeout = first_timeout
        self.timeout_factor = timeout_factor
        self.min_timeout = min_timeout
        self.max_failures = max_failures if max_failures is not None else 4 * size + 8
        self.failures = 0
        self.slowest: dict[Any, float] = {}         # per program, items of warm actors
        self.slowest_first: dict[Any, float] = {}   # per program, first items (with compile)
        self.last_progress = time.time()   # a result, a ready actor, or a (re)started actor

    def _deadline(self, i: int, program: Any = None) -> float:
        if program not in self.warm[i] or self.slowest.get(program, 0.0) == 0.0:
            return max(self.first_timeout,
                       self.timeout_factor * self.slowest_first.get(program, 0.0))
        return max(self.min_timeout, self.timeout_factor * self.slowest[program])

    def _replace(self, i: int, reason: str) -> None:
        self.failures += 1
        log.warning("worker %d lost (%s); replacing it and resubmitting its work", i, reason)
        if self.failures > self.max_failures:
            raise PoolFailure(f"{self.failures} worker failures (last: {reason}); giving up")
        try:
            ray.kill(self.actors[i], no_restart=True)
        except SYSTEM_FAILURES + (ValueError,):
            pass
        self.actors[i] = self.make_actor()
        self.warm[i] = set()
        self.pings[self.actors[i].pid.remote()] = i
        self.last_progress = time.time()

    def map_unordered(self, submit: Callable[[Any, Any], "ray.ObjectRef"],
                      items: Sequence[Any],
                      program: Callable[[Any], Any] = lambda item: None
                      ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` for every item, each exactly once, as they finish.

        ``submit(actor, item)`` starts the remote call and returns its ObjectRef;
        ``program(item)`` names the compiled program the item runs (deadlines are per program).
        """
        queue = collections.deque(range(len(items)))
        inflight: dict[Any, tuple[int, int, float]] = {}
        self.last_progress = time.time()
        while queue or inflight:
            while queue and self.idle:
                i = self.idle.popleft()
                k = queue.popleft()
                inflight[submit(self.actors[i], items[k])] = (k, i, time.time())
            ready, _ = ray.wait(list(inflight) + list(self.pings), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.pings:
                    i = self.pings.pop(ref)
                    try:
                        ray.get(ref, timeout=60)
                    except SYSTEM_FAILURES as e:
                        self._replace(i, f"did not start ({type(e).__name__})")
                        continue
                    self.idle.append(i)
                    self.last_progress = time.time()
                    continue
                k, i, t0 = inflight.pop(ref)
                try:
                    result = ray.get(ref, timeout=60)
                except SYSTEM_FAILURES as e:
                    queue.appendleft(k)
                    self._replace(i, type(e).__name__)
                    continue
                prog = program(items[k])
                took = time.time() - t0
                seen = self.slowest if prog in self.warm[i] else self.slowest_first
                seen[prog] = max(seen.get(prog, 0.0), took)
                self.warm[i].add(prog)
                self.idle.append(i)
                self.last_progress = time.time()
                yield k, result
            now = time.time()
            for ref, (k, i, t0) in list(inflight.items()):
                limit = self._deadline(i, program(items[k]))
                if now - t0 > limit:
                    inflight.pop(ref)
                    queue.appendleft(k)
                    self._replace(i, f"item {k} exceeded its {limit:.0f}s deadline")
            if not inflight and not self.idle and now - self.last_progress > self.first_timeout:
                raise PoolFailure(f"no worker could be started for {self.first_timeout:.0f}s "
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
        from cluster.connect import check_resources, connect, worker_env
        self.started = connect(address)
        check_resources(gpus_per_worker, num_workers)
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
