"""HTTP calls to a provider's batch API, with every failure translated in this one place.

Calls go through the deployment's pooled transport (`workers.providers.http`), like the
provider adapters' and for the same reasons (no cookie jar shared between tenants, proxy
and TLS per route). Statuses are read by the adapters' own rules (`workers.providers.calls`):
408, 409, 429, 5xx and 401/403/404 are worth another try (`ProviderRetriable`); any other
4xx is the provider refusing this call (`ProviderRejected`), with its own message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import httpx
import orjson

from broker.errors import ProviderRetriable
from workers.providers.calls import (
    USER_AGENT,
    build_request,
    classify_status,
    open_stream,
    read_answer,
    translate_transport,
)


class UpstreamHTTP:
    """JSON (and JSONL) calls to one deployment's API root.

    Args:
        transport: The deployment's pooled transport.
        deployment: Its name, for error messages.
        base_url: The API root, e.g. `https://api.openai.com/v1`.
        headers: Authentication and version headers sent with every call.
        timeout_s: Bounds each call (uploads and downloads of large files included).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, deployment: str, base_url: str,
                 headers: Sequence[tuple[str, str]], timeout_s: float):
        self._transport = transport
        self.deployment = deployment
        self._base = base_url.rstrip("/")
        self._headers = [(b"user-agent", USER_AGENT),
                         *((name.encode(), value.encode()) for name, value in headers)]
        self._timeout_s = timeout_s

    def _request(self, method: str, path: str, content: bytes | None,
                 headers: Sequence[tuple[bytes, bytes]], *, stream: bool = False,
                 params: dict[str, str] | None = None) -> httpx.Request:
        url = httpx.URL(self._base + path, params=params)
        return build_request(method, url, [(b"host", url.netloc), *self._headers, *headers],
                             content, self._timeout_s, stream=stream)

    async def call(self, method: str, path: str, *, json: Any = None,
                   content: bytes | None = None, content_type: str | None = None,
                   params: dict[str, str] | None = None) -> Any:
        """Send one request and return its JSON answer.

        Raises:
            ProviderRetriable: Timeouts, connection errors, 408/409/429, 5xx, 401/403/404
                (the deployment's fault), or a 2xx answer that is not JSON.
            ProviderRejected: Any other 4xx.
        """
        headers = [(b"accept", b"application/json")]
        if json is not None:
            content, content_type = orjson.dumps(json), "application/json"
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        response = await read_answer(
            self._transport, self._request(method, path, content, headers, params=params),
            self.deployment, self._timeout_s)
        if not response.is_success:
            self._refused(response)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProviderRetriable(
                f"deployment '{self.deployment}' answered {method} {path} with a body that "
                "is not JSON", status_code=response.status_code,
                deployment=self.deployment) from exc

    @asynccontextmanager
    async def lines(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The lines of a JSONL download, read as they arrive (a result file can be large).

        Raises:
            ProviderRetriable: As `call`, also when the download breaks off.
            ProviderRejected: As `call`.
        """
        request = self._request("GET", path, None, [(b"accept", b"application/binary")],
                                stream=True)
        response = await open_stream(self._transport, request, self.deployment, self._timeout_s)
        if not response.is_success:
            self._refused(response)
        try:
            yield self._split(response)
        finally:
            await response.aclose()

    async def _split(self, response: httpx.Response) -> AsyncIterator[bytes]:
        pending = b""
        try:
            async for chunk in response.aiter_bytes():
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    if line.strip():
                        yield line
        except httpx.RequestError as exc:
            translate_transport(exc, self.deployment, self._timeout_s)
        if pending.strip():
            yield pending

    def _refused(self, response: httpx.Response) -> NoReturn:
        # 401/403/404 are retriable: our key or URL is wrong, not the lines. An operator
        # fixes the deployment and the next tick goes on; failing the chunk would fail
        # every line in it.
        classify_status(response, self.deployment, check="its API key and base_url",
                        operation=f"{response.request.method} {response.request.url.path}")
