"""The console end to end: headless Chromium (Debian's, driven by Playwright) against a
real ingress served by uvicorn, over real Kafka and PostgreSQL (`running_stack`).

Screenshots of each step go to `test-artifacts/console/` (CI keeps them as artifacts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import text

from broker.embedded import free_port
from broker.kafka import DLQ_AT, DLQ_REASON, DLQ_TOPIC, encode, new_producer, topics_for
from broker.settings import IngressSettings, KafkaSettings
from broker.signing import service_headers
from broker.stores.keys import create_api_key
from ingress.hot_routes import serve
from schemas import ChatCompletionRequest, InferenceRequest
from tests.integration.stack import Stack, demo_config, eventually, running_stack
from workers.inference.heartbeat import WorkerHeartbeat

# A gateway feature above the Kafka port: on the production engine only (the port's own
# behaviour is proven on both engines by tests/kafka_contract.py and the pipeline tests),
# which keeps CI within its time.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
ADMIN = "console-admin-key-" + "0" * 32
MODEL = "gpt-4o-mini"
USAGE_BARS = "#usage-requests rect[data-series='gpt-4o-mini']"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic"]

if not CHROMIUM.exists() and os.environ.get("CI"):  # CI installs it (.ci/run): never skip
    raise RuntimeError("CI must install Debian's chromium (apt-get install -y chromium)")
if not CHROMIUM.exists():
    pytest.skip("the console tests drive Debian's chromium at /usr/bin/chromium: "
                "apt-get install -y chromium", allow_module_level=True)

from playwright.async_api import Page, async_playwright, expect  # noqa: E402


@contextlib.asynccontextmanager
async def _served(stack: Stack) -> AsyncIterator[str]:
    """The stack's ingress over real HTTP on a free loopback port (its lifespan already
    runs inside `running_stack`)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        serve(stack.client._transport.app.app),  # type: ignore[attr-defined]
        host="127.0.0.1", port=port, lifespan="off", ws="none", log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), 15)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def _chat(stack: Stack, secret: str, content: str) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text


async def _dead_letter(kafka: KafkaSettings) -> str:
    """A valid request parked in the dead-letter topic, as if its model had been unknown."""
    request = InferenceRequest(
        id=f"req_{uuid.uuid4().hex}", model=MODEL, tenant="acme",
        created_at=datetime.now(UTC),
        body=ChatCompletionRequest.model_validate(
            {"model": MODEL, "messages": [{"role": "user", "content": "replayed"}]}))
    payload = encode(request)
    topics = topics_for(kafka)
    producer = new_producer(kafka, client_id="test-dead-letter")
    await producer.start()
    try:
        await producer.send_and_wait(topics.dead_letter, payload, key=request.id.encode(), headers=[
            *service_headers(kafka, payload),
            (DLQ_REASON, b"unknown model (test)"), (DLQ_TOPIC, topics.requests(MODEL).encode()),
            (DLQ_AT, datetime.now(UTC).isoformat().encode())])
    finally:
        await producer.stop()
    return request.id


async def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _sign_in(page: Page, base: str, secret: str) -> None:
    await page.goto(f"{base}/console")
    await page.fill("#key", secret)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#console")).to_be_visible()


async def _usage_total(page: Page) -> float:
    values = await page.locator("#usage-requests rect[data-series]").evaluate_all(
        "rects => rects.map(r => Number(r.dataset.value))")
    return float(sum(values))


async def test_console_end_to_end(kafka_settings: KafkaSettings, database_url: str) -> None:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=SecretStr(ADMIN))
    # A budget on the deployment, so the console has a gauge to show.
    config = demo_config(rpm=1000)
    async with running_stack(kafka_settings, database_url, config=config,
                             ingress=ingress) as stack, \
            _served(stack) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            await _scenarios(stack, base, page)
        finally:
            await browser.close()
        assert errors == []  # no CSP violation, no script error


async def _scenarios(stack: Stack, base: str, page: Page) -> None:
    # Sign in as the admin: every view empty, each naming its next step.
    await _sign_in(page, base, ADMIN)
    await expect(page.locator("#who")).to_have_text("admin — every tenant")
    await expect(page.locator("#usage-empty")).to_contain_text("curl")
    await expect(page.locator("#workers-empty")).to_contain_text("sluice worker")
    await _shot(page, "01-admin-empty")

    # Requests through the API, for two tenants; the ledger records them.
    other, _ = await create_api_key(stack.engine, "globex")
    for n in range(3):
        await _chat(stack, stack.api_key, f"acme {n}")
    await _chat(stack, other, "globex")
    await eventually(lambda: stack.scalar("SELECT count(*) = 4 FROM usage_events"), 30)

    # A worker heartbeat with an open breaker, and one that stopped beating.
    beat = WorkerHeartbeat(stack.engine, lambda: {
        "models": [MODEL], "ready": True, "in_flight": 2,
        "breakers": {"sim": {"state": "open", "consecutive_failures": 5}}}, worker_id="w-live")
    await beat.beat()
    await WorkerHeartbeat(stack.engine, lambda: {"models": [MODEL], "ready": True,
                                                 "in_flight": 0}, worker_id="w-gone").beat()
    async with stack.engine.begin() as connection:
        await connection.execute(text("UPDATE worker_heartbeats SET beat_at = now() - "
                                      "interval '45 seconds' WHERE worker_id = 'w-gone'"))

    await page.click("#refresh")
    await expect(page.locator(USAGE_BARS)).not_to_have_count(0)
    assert await _usage_total(page) == 4  # both tenants: the admin sees every one
    await expect(page.locator("#usage-tenants")).to_contain_text("globex")
    throughput = page.locator("#throughput-chart rect[data-series='gpt-4o-mini']")
    await expect(throughput).not_to_have_count(0)
    await expect(page.locator("#queues tbody tr")).to_have_count(2)  # interactive and batch
    gauge = page.locator("#budgets .gauge[data-deployment='sim']", has_text="requests")
    await expect(gauge).to_contain_text("20 of 20 left; limit 1000 per 60s")
    live = page.locator("#workers tbody tr", has_text="w-live")
    await expect(live.locator(".state-open")).to_have_text("sim: open (5 failures)")
    await expect(page.locator("#workers tbody tr.stale")).to_contain_text("w-gone")
    await _shot(page, "02-admin-usage-and-health")

    # CSV export, server side, downloaded with the bearer key.
    async with page.expect_download() as download_info:
        await page.click("#usage-csv")
    download = await download_info.value
    csv_text = await asyncio.to_thread(Path(await download.path()).read_text)
    assert csv_text.splitlines()[0].startswith("tenant,model,day,")
    assert "acme,gpt-4o-mini" in csv_text and "globex,gpt-4o-mini" in csv_text

    # Create a key in the UI: its secret is shown once and works; then revoke it.
    await page.fill("#key-tenant", "initech")
    await page.fill("#key-name", "from-the-console")
    await page.click("#key-form button[type=submit]")
    await expect(page.locator("#key-secret")).to_be_visible()
    secret = await page.locator("#key-secret-value").text_content()
    assert secret is not None and secret.startswith("sk-sluice-")
    models = await stack.client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert models.status_code == 200
    row = page.locator("#key-list tbody tr", has_text="from-the-console")
    await expect(row).to_contain_text("active")
    await _shot(page, "03-key-created")
    await row.locator("button").click()
    await row.locator("button", has_text="Confirm revoke").click()
    await expect(row).to_contain_text("revoked")
    assert await stack.scalar("SELECT revoked_at IS NOT NULL FROM api_keys "
                              "WHERE name = 'from-the-console'")
    await _shot(page, "04-key-revoked")

    # Replay a dead letter from the UI; the worker then answers it.
    request_id = await _dead_letter(stack.kafka)
    await page.click("#deadletters-load")
    letter = page.locator("#deadletters tbody tr", has_text="unknown model (test)")
    await expect(letter).to_have_count(1)
    await _shot(page, "05-dead-letter")
    await letter.locator("button", has_text="Replay").click()
    await expect(page.locator("#deadletters-status")).to_contain_text("Replayed 1")
    await eventually(lambda: stack.scalar(
        "SELECT status = 'succeeded' FROM requests WHERE id = :id", id=request_id), 30)
    await _shot(page, "06-dead-letter-replayed")

    # A tenant key sees its own tenant only, and none of the operator's views.
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    await _sign_in(page, base, stack.api_key)
    await expect(page.locator("#who")).to_have_text("tenant acme")
    await expect(page.locator(USAGE_BARS)).not_to_have_count(0)
    assert await _usage_total(page) == 4  # acme's three and the replayed one, not globex's
    await expect(page.locator("#health")).to_be_hidden()
    await expect(page.locator("#queues")).to_be_hidden()
    # A member may not list keys (only a tenant admin, as on /v1/admin/keys): no key panel.
    await expect(page.locator("#keys")).to_be_hidden()
    await _shot(page, "07-tenant-view")
