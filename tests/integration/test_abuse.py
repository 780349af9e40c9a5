"""Abuse, replayed against a real stack, and what a well-behaved tenant saw meanwhile.

One stack (real Kafka and PostgreSQL, the simulator behind a budgeted deployment). Tenant
`acme` behaves: one synchronous chat completion every 100 ms, each timed. Meanwhile tenant
`abuser` (or someone without a key) tries, one after the other, the abuse the hardening
issue lists. For each the test checks that the abuse was contained, and that every one of
acme's requests was answered 200. The table of acme's latencies per abuse is printed at
the end (`pytest -s`, or in the report on failure); latencies are reported, not asserted.

Covered elsewhere, with the same real parts: provider 401/403 (test_failover), a
PostgreSQL outage (test_api_keys), slow webhook receivers (test_webhook_leases), batch
lines of many megabytes (test_batches).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from broker.kafka import encode, new_producer, topics_for
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from broker.stores.tenants import set_tenant
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest
from simulator import SimulatorSettings
from tests.integration.stack import Stack, demo_config, eventually, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

MODEL = "gpt-4o-mini"
PROBE_EVERY_S = 0.1
# The abuser's answers are long (the simulator writes 2,000 tokens unless capped).
LONG_ANSWER_TOKENS = 2000


@dataclass
class Probe:
    """Acme's steady synchronous traffic; what it saw."""

    stack: Stack
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        calls: list[asyncio.Task[None]] = []
        while not stop.is_set():
            calls.append(asyncio.create_task(self._one()))
            await asyncio.sleep(PROBE_EVERY_S)
        await asyncio.gather(*calls)

    async def _one(self) -> None:
        started = time.perf_counter()
        answer = await self.stack.client.post("/v1/chat/completions", headers=self.stack.auth,
                                              json={"model": MODEL, "max_tokens": 8,
                                                    "messages": [{"role": "user",
                                                                  "content": "Still fine?"}]})
        self.latencies.append(time.perf_counter() - started)
        self.statuses.append(answer.status_code)


@asynccontextmanager
async def _probed(stack: Stack) -> AsyncIterator[Probe]:
    probe = Probe(stack)
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    try:
        yield probe
    finally:
        stop.set()
        await task


def _row(name: str, contained: str, probe: Probe) -> str:
    ordered = sorted(probe.latencies)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return (f"{name:<34} {contained:<44} {len(probe.statuses):>4} "
            f"{probe.statuses.count(200):>4} {statistics.median(ordered) * 1000:>7.1f} "
            f"{p95 * 1000:>7.1f}")


async def _unknown_keys(stack: Stack, _abuser: str) -> str:
    answers = await asyncio.gather(*(
        stack.client.post("/v1/chat/completions",
                          headers={"Authorization": f"Bearer sk-guess-{uuid.uuid4().hex}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        for _ in range(300)))
    throttled = sum(1 for answer in answers if answer.status_code == 429)
    assert {answer.status_code for answer in answers} == {401, 429}
    assert throttled >= 250
    return f"{throttled} of 300 guesses throttled (429)"


async def _long_polls(stack: Stack, abuser: str) -> str:
    headers = {"Authorization": f"Bearer {abuser}"}
    missing = f"req_{uuid.uuid4().hex}"
    started = time.perf_counter()
    answers = await asyncio.gather(*(
        stack.client.get(f"/v1/requests/{missing}?wait=3", headers=headers)
        for _ in range(300)))
    assert {answer.status_code for answer in answers} == {404}
    elapsed = time.perf_counter() - started
    return f"300 polls, cap 100 waited ({elapsed:.1f} s)"


async def _backlog(stack: Stack, abuser: str) -> str:
    headers = {"Authorization": f"Bearer {abuser}", "Prefer": "respond-async"}
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "q"}]}
    for _ in range(4):
        answers = await asyncio.gather(*(
            stack.client.post("/v1/chat/completions", json=body, headers=headers)
            for _ in range(100)))
        assert {answer.status_code for answer in answers} == {202}
    await asyncio.sleep(3)
    pending = await stack.scalar("SELECT count(*) FROM requests WHERE tenant = 'abuser' "
                                 "AND status = 'queued'")
    return f"400 queued; {pending} still waiting after 3 s"


async def _forged(stack: Stack, _abuser: str) -> str:
    # Unsigned requests naming acme (the probe's tenant), written straight to Kafka.
    kafka = stack.kafka
    topic = topics_for(kafka).requests(MODEL)
    producer = new_producer(kafka, client_id="forger")
    await producer.start()
    ids = [f"req_forged_{uuid.uuid4().hex[:10]}" for _ in range(100)]
    try:
        for request_id in ids:
            forged = InferenceRequest(
                id=request_id, model=MODEL, tenant="acme", created_at=datetime.now(UTC),
                body=ChatCompletionRequest(model=MODEL, messages=[
                    ChatMessage(role="user", content="bill acme")]))
            await producer.send_and_wait(topic, encode(forged), key=request_id.encode())
    finally:
        await producer.stop()
    await asyncio.sleep(2)
    served = await stack.scalar(
        "SELECT count(*) FROM usage_events WHERE request_id LIKE 'req_forged_%'")
    assert served == 0
    return "100 unsigned requests as acme: 0 served"


async def _long_answers(stack: Stack, abuser: str) -> str:
    headers = {"Authorization": f"Bearer {abuser}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a lot."}]}
    answers = await asyncio.gather(*(
        stack.client.post("/v1/chat/completions", json=body, headers=headers)
        for _ in range(30)))
    admitted = sum(1 for answer in answers if answer.status_code == 200)
    refused = sum(1 for answer in answers if answer.status_code == 429)
    assert admitted + refused == 30 and refused > 0
    spent = await eventually(lambda: stack.scalar(
        "SELECT spent_usd FROM spend_accounts WHERE scope = 'tenant:abuser'"))
    assert spent <= BUDGET_USD
    return f"{admitted} admitted, spent ${spent:.4f} of ${BUDGET_USD}"


# The abuser's budget: about five of its long answers, at the demo price.
BUDGET_USD = Decimal("0.006")

Abuse = Callable[[Stack, str], Awaitable[str]]
ABUSES: list[tuple[str, Abuse]] = [
    ("a flood of unknown keys", _unknown_keys),
    ("300 long polls at once", _long_polls),
    ("a backlog of 400 async requests", _backlog),
    ("forged Kafka-native requests", _forged),
    ("long answers without max_tokens", _long_answers),
]


async def test_a_well_behaved_tenant_is_served_through_every_abuse(
    kafka_settings: KafkaSettings, database_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    # A budget of 50 calls a second; every answer is long unless capped, and capped at
    # LONG_ANSWER_TOKENS by the deployment; unsigned requests are not trusted.
    config = demo_config(rpm=50, window_s=1.0, max_output_tokens=LONG_ANSWER_TOKENS)
    kafka = kafka_settings.model_copy(update={"kafka_trust_unsigned": False})
    simulator = SimulatorSettings(output_tokens=LONG_ANSWER_TOKENS)
    rows = []
    async with running_stack(kafka, database_url, config=config, simulator=simulator) as stack:
        abuser, _ = await create_api_key(stack.engine, "abuser")
        await set_tenant(stack.engine, "abuser", monthly_budget_usd=BUDGET_USD)
        # The abuser's own key is known to the edge before its address starts guessing.
        models = await stack.client.get("/v1/models",
                                        headers={"Authorization": f"Bearer {abuser}"})
        assert models.status_code == 200
        async with _probed(stack) as warm_up:
            await asyncio.sleep(2)
        rows.append(_row("(nothing: the baseline)", "", warm_up))
        for name, abuse in ABUSES:
            async with _probed(stack) as probe:
                contained = await abuse(stack, abuser)
            rows.append(_row(name, contained, probe))
            assert probe.statuses and set(probe.statuses) == {200}, (name, probe.statuses)
    with capsys.disabled():
        print("\nwhat acme (one request every 100 ms) saw while the abuser tried:")
        print(f"{'abuse':<34} {'contained':<44} {'sent':>4} {'200':>4} {'p50 ms':>7} "
              f"{'p95 ms':>7}")
        print("\n".join(rows))
