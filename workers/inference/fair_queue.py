"""Deficit round-robin between tenants: who waits at a budget gate goes next.

A model's topic is one FIFO, so without this the budget of a deployment goes to requests
in the order they were polled: a tenant that queued a thousand requests makes every other
tenant wait behind them. Each tenant waiting here has its own FIFO; tenants take turns,
and each turn lets a tenant spend up to one quantum of cost (tokens) plus what it saved
from earlier turns (the deficit), so tenants share the budget equally by tokens whatever
their request sizes (Shreedhar and Varghese's DRR). A tenant that stops waiting loses its
savings, so bursts cannot be banked.

The quantum is the cheapest request waiting at the head of any tenant's queue, so with
requests of similar size tenants alternate one by one (a newcomer waits for at most one
request of each other tenant), and a large request waits for as many turns of the others
as its tokens are worth. A tenant's turn is worth its weight in quanta (`tenants.weight`,
default 1): a tenant of weight 2 gets twice the tokens of one of weight 1.

The queue is passive: the gate asks for the head, tries to reserve budget for it, and
takes it only when granted. Entries whose caller gave up are skipped.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")

class FairQueue(Generic[Item]):
    """Per-tenant FIFOs served by deficit round-robin.

    Args:
        cost: An item's cost in the shared resource (tokens), more than 0.
        abandoned: Whether an item's caller gave up (it is dropped when it reaches a head).
        weight: A tenant's weight, more than 0 (default: 1 for everyone).
    """

    def __init__(self, cost: Callable[[Item], float], abandoned: Callable[[Item], bool],
                 weight: Callable[[str], float] = lambda _tenant: 1.0):
        self._cost = cost
        self._abandoned = abandoned
        self._weight = weight
        # Tenants with something waiting, in turn order: the first one is being served.
        self._queues: OrderedDict[str, deque[Item]] = OrderedDict()
        self._deficit: dict[str, float] = {}

    def push(self, tenant: str, item: Item) -> None:
        """Queue `item` behind `tenant`'s earlier ones; a new tenant gets its turn last."""
        queue = self._queues.get(tenant)
        if queue is None:
            self._queues[tenant] = queue = deque()
            self._deficit[tenant] = 0.0
        queue.append(item)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[Item]:
        """Every live item, tenant by tenant."""
        for queue in self._queues.values():
            yield from (item for item in queue if not self._abandoned(item))

    def head(self) -> tuple[str, Item] | None:
        """The tenant whose turn it is and its oldest item; None when nothing waits."""
        self._prune()
        if not self._queues:
            return None
        quantum = min(self._cost(queue[0]) for queue in self._queues.values())
        # Bounded: every full round adds a quantum to each tenant's allowance.
        while True:
            tenant, queue = next(iter(self._queues.items()))
            if self._deficit[tenant] >= self._cost(queue[0]):
                return tenant, queue[0]
            self._queues.move_to_end(tenant)  # its turn is over; the next one starts
            upcoming = next(iter(self._queues))
            self._deficit[upcoming] += quantum * self._weight(upcoming)

    def pop(self, tenant: str) -> Item:
        """Take `tenant`'s oldest item (the head `head()` returned) and charge its cost."""
        queue = self._queues[tenant]
        item = queue.popleft()
        self._deficit[tenant] -= self._cost(item)
        if not queue:
            self._forget(tenant)
        return item

    def drain(self) -> list[Item]:
        """Remove and return everything, live or not."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._deficit.clear()
        return items

    def _prune(self) -> None:
        for tenant in list(self._queues):
            queue = self._queues[tenant]
            while queue and self._abandoned(queue[0]):
                queue.popleft()
            if not queue:
                self._forget(tenant)

    def _forget(self, tenant: str) -> None:
        del self._queues[tenant]
        del self._deficit[tenant]
