"""Send one signed webhook attempt, connecting only to the address the SSRF check pinned.

The host is resolved once (`resolve_pinned`); the request then goes to that IP, with the
original name in `Host` and, for https, in SNI and certificate verification (httpcore's
`sni_hostname` extension). Redirects are never followed, proxies from the environment are
ignored (they would connect elsewhere), and connections are not kept alive, so a pooled
connection opened for one name is never reused for another name on the same address.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from broker.errors import WebhookUrlRefused
from broker.webhooks.addresses import (
    AddressPolicy,
    Resolver,
    parse_webhook_url,
    resolve_pinned,
    system_resolver,
)
from broker.webhooks.settings import WebhookSettings
from workers.deliver.policy import AttemptOutcome, parse_retry_after

_SHOWN_BODY_CHARS = 200


def new_client(settings: WebhookSettings) -> httpx.AsyncClient:
    """The HTTP client for deliveries (one per deliverer)."""
    return httpx.AsyncClient(
        timeout=settings.webhook_timeout_s,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=settings.deliver_concurrency,
                            max_keepalive_connections=0),
    )


class WebhookSender:
    """Posts signed payloads to webhook URLs under the SSRF policy.

    Args:
        client: the HTTP client (see `new_client`); injected so tests can swap transports.
        settings: timeouts, response size limit and the allowlist.
        resolver: DNS lookup (the system resolver unless a test gives another).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: WebhookSettings,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._client = client
        self._settings = settings
        self._policy: AddressPolicy = settings.address_policy()
        self._resolver = resolver

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptOutcome:
        """One attempt; never raises for network or policy failures (they are outcomes)."""
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            target = parse_webhook_url(url)
            address = await resolve_pinned(target, self._policy, self._resolver)
        except WebhookUrlRefused as exc:
            return AttemptOutcome(error=f"refused: {exc}", refused=True, duration_ms=elapsed())
        except OSError as exc:
            return AttemptOutcome(error=f"cannot resolve {url!r}: {exc}", duration_ms=elapsed())
        request = self._client.build_request(
            "POST", target.pinned_url(address), content=body,
            headers={**headers, "host": target.host_header, "user-agent": "sluicegate-webhooks"},
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        try:
            # httpx's timeout bounds each read; this bounds the whole attempt, so a receiver
            # dripping a byte at a time cannot hold one of the deliverer's slots for long.
            async with asyncio.timeout(self._settings.webhook_timeout_s):
                response = await self._client.send(request, stream=True, follow_redirects=False)
                try:
                    snippet = await self._read_some(response)
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError):
            return AttemptOutcome(error=f"timed out after {self._settings.webhook_timeout_s:g}s",
                                  address=str(address), duration_ms=elapsed())
        except (httpx.HTTPError, OSError) as exc:
            return AttemptOutcome(error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                                  address=str(address), duration_ms=elapsed())
        status = response.status_code
        error = None if 200 <= status < 300 else _describe(response, snippet)
        return AttemptOutcome(
            status_code=status, error=error, address=str(address), duration_ms=elapsed(),
            retry_after_s=parse_retry_after(response.headers.get("retry-after"), time.time()),
        )

    async def _read_some(self, response: httpx.Response) -> bytes:
        # Receivers may answer with anything; keep only what explains a failure.
        limit = self._settings.webhook_max_response_bytes
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= limit:
                break
        return bytes(body[:limit])


def _describe(response: httpx.Response, snippet: bytes) -> str:
    text = f"HTTP {response.status_code}"
    if 300 <= response.status_code < 400:
        location = response.headers.get("location")
        text += f" (redirect to {location!r} not followed)" if location else " (redirect)"
    shown = snippet.decode(errors="replace").strip()[:_SHOWN_BODY_CHARS]
    return f"{text}: {shown}" if shown else text
