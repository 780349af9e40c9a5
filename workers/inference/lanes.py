"""Waiting for budget, interactive first: one gate per budgeted deployment per worker.

A request about to call a budgeted deployment asks its gate for a reservation. Each gate
is one loop that reserves for the request at the head of its queue (the interactive
queue first, the batch queue only when no interactive request waits here) and, when the
shared budget says "not yet", sleeps for the wait the store computed: no hot loop, no
provider call, and the Kafka message is simply held (the pool pauses its partitions when
its slots are full and keeps polling). Batch reservations also ask for a margin
(`batch_budget_margin` of a bucket's burst) so interactive calls of *other* workers win
the next refill. When PostgreSQL cannot be reached the gate fails closed: it waits and
asks again, sending nothing.

Within a lane, tenants take turns by tokens (`workers.inference.fair_queue`): a tenant
with a thousand requests waiting here and one with a single request alternate, instead
of the single request waiting for the thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker import metrics
from broker.budgets import Backoff, BucketShape, BudgetStore, Vector
from broker.budgets.shapes import shape_of
from broker.budgets.signals import RateLimitSignal
from broker.config import DeploymentConfig
from schemas import Lane
from workers.inference.fair_queue import FairQueue

log = logging.getLogger("sluice.worker.budgets")

_MAX_SLEEP_S = 1.0
_STORE_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget taken for one call; settle or release it exactly once."""

    deployment: str
    costs: Vector
    lease: float


@dataclass(frozen=True, slots=True)
class _Waiter:
    costs: Vector
    future: asyncio.Future[Reservation]


def _tokens(waiter: _Waiter) -> float:
    # Turns are shared by tokens; a call that counts none still takes a little of a turn.
    return max(1.0, waiter.costs[1])


def _gave_up(waiter: _Waiter) -> bool:
    return waiter.future.done()  # its caller gave up (deadline, failover)


class _Gate:
    def __init__(self, name: str, shape: BucketShape, store: BudgetStore, margin: float,
                 weight: Callable[[str], float]):
        self.name = name
        self.shape = shape
        self._store = store
        self._margin = margin
        # Within a lane tenants take turns (`FairQueue`): one tenant's backlog does not
        # hold the others' requests behind it.
        self.queues: dict[Lane, FairQueue[_Waiter]] = {
            lane: FairQueue(_tokens, _gave_up, weight) for lane in (Lane.INTERACTIVE, Lane.BATCH)
        }
        self._arrived = asyncio.Event()
        self._interactive_arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.store_failures = 0

    def waiting(self, lane: Lane) -> int:
        return len(self.queues[lane])

    async def acquire(self, costs: Vector, lane: Lane, tenant: str = "") -> Reservation:
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self.queues[lane].push(tenant, _Waiter(costs, future))
        self._arrived.set()
        if lane is Lane.INTERACTIVE:
            self._interactive_arrived.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    def _head(self) -> tuple[Lane, str, _Waiter] | None:
        for lane in (Lane.INTERACTIVE, Lane.BATCH):
            head = self.queues[lane].head()
            if head is not None:
                return lane, head[0], head[1]
        return None

    async def _run(self) -> None:
        while True:
            head = self._head()
            if head is None:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            lane, tenant, waiter = head
            if lane is Lane.INTERACTIVE:
                self._interactive_arrived.clear()
            margin = self._margin if lane is Lane.BATCH else 0.0
            try:
                grant = await self._store.reserve(self.name, self.shape, waiter.costs, margin)
            except Exception as exc:  # fail closed: nothing is sent without a reservation
                self.store_failures += 1
                log.warning("budget store unavailable for %s (%s); holding requests",
                            self.name, exc)
                await asyncio.sleep(_STORE_RETRY_S)
                continue
            if grant.granted:
                reservation = Reservation(self.name, waiter.costs, grant.lease)
                if waiter.future.done():  # gave up while we asked: give the budget back
                    await self._give_back(reservation)
                else:
                    self.queues[lane].pop(tenant)
                    waiter.future.set_result(reservation)
                continue
            # A little jitter keeps the workers sharing a budget from asking in lockstep.
            pause = min(grant.wait_s, _MAX_SLEEP_S) * (1 + 0.05 * random.random())
            if lane is Lane.BATCH:  # an interactive arrival takes the head at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._interactive_arrived.wait(), pause)
            else:
                await asyncio.sleep(pause)

    async def _give_back(self, reservation: Reservation) -> None:
        with contextlib.suppress(Exception):
            await self._store.settle(self.name, self.shape, reservation.costs,
                                     (0.0, 0.0, 0.0, 0.0), reservation.lease)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for queue in self.queues.values():
            for waiter in queue.drain():
                waiter.future.cancel()


class BudgetGates:
    """The gates of every budgeted deployment, and what this worker knows of them.

    Args:
        deployments: The configured deployments (those without a budget get no gate).
        store: The shared budget state.
        batch_margin: Share of a bucket's burst batch reservations leave for interactive.
        weight: Each tenant's weight in the turns at a gate (default: equal).
    """

    def __init__(self, deployments: Mapping[str, DeploymentConfig], store: BudgetStore,
                 *, batch_margin: float = 0.5,
                 weight: Callable[[str], float] = lambda _tenant: 1.0) -> None:
        self.store = store
        self.gates: dict[str, _Gate] = {}
        for name, config in deployments.items():
            shape = shape_of(config)
            if shape.limited:
                self.gates[name] = _Gate(name, shape, store, batch_margin, weight)
        self._learned: dict[str, Vector] = {}
        self.rate_limited = 0
        self.last_snapshot: dict[str, Any] = {}

    def waiting(self, lane: Lane) -> int:
        """Requests of `lane` waiting here for budget."""
        return sum(gate.waiting(lane) for gate in self.gates.values())

    async def acquire(self, deployment: str, costs: Vector, lane: Lane,
                      tenant: str = "") -> Reservation | None:
        """Wait for budget (cancel or time out the await to give up); None: no budget set.

        Tenants waiting in one lane take turns by tokens (`FairQueue`).
        """
        gate = self.gates.get(deployment)
        return None if gate is None else await gate.acquire(costs, lane, tenant)

    async def settle(self, reservation: Reservation | None, used: Vector | None) -> None:
        """Charge what the call used (`None`: nothing, the call failed); never raises."""
        if reservation is None:
            return
        gate = self.gates[reservation.deployment]
        try:
            await self.store.settle(reservation.deployment, gate.shape, reservation.costs,
                                    used or (0.0, 0.0, 0.0, 0.0), reservation.lease)
        except Exception as exc:  # the lease ends by itself; the bucket erred on the safe side
            log.warning("settling budget of %s failed: %s", reservation.deployment, exc)

    async def observe(self, deployment: str, signal: RateLimitSignal, *,
                      rate_limited: bool) -> None:
        """Learn from the provider's headers; on a 429 stop every worker until the reset."""
        gate = self.gates.get(deployment)
        if gate is None:
            return
        try:
            if signal.announced and self._learned.get(deployment) != signal.limits:
                await self.store.learn(deployment, signal.limits)
                self._learned[deployment] = signal.limits
            if rate_limited:
                self.rate_limited += 1
                block = signal.retry_after_s or signal.exhausted_for_s() or 1.0
                await self.store.rate_limited(deployment, gate.shape, Backoff(block_s=block))
        except Exception as exc:
            log.warning("recording rate-limit signal of %s failed: %s", deployment, exc)

    async def report(self, stop: asyncio.Event, *, refresh_s: float = 2.0,
                     log_every_s: float = 30.0) -> None:
        """Refresh `last_snapshot` (served by `/status`) and log it periodically."""
        since_log = 0.0
        while not stop.is_set() and self.gates:
            snapshot: dict[str, Any] = {}
            for name, gate in self.gates.items():
                try:
                    snapshot[name] = await self.store.snapshot(name, gate.shape)
                except Exception as exc:
                    snapshot[name] = {"error": str(exc)}
                snapshot[name]["waiting"] = {lane.value: gate.waiting(lane) for lane in Lane}
            self.last_snapshot = snapshot
            metrics.export_budgets(snapshot)  # sluice_budget_remaining, _utilization_ratio
            since_log += refresh_s
            if since_log >= log_every_s:
                since_log = 0.0
                for name, state in snapshot.items():
                    log.info("budget %s: %s", name, state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), refresh_s)

    def close(self) -> None:
        """Stop every gate's loop (requests still waiting are being drained anyway)."""
        for gate in self.gates.values():
            gate.close()
