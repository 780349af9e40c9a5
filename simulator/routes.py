"""Routing of the simulator's bare ASGI app: exact paths first, then path patterns.

Exact paths (`/v1/chat/completions`) are one dictionary look-up, so the benchmark's hot
path pays nothing for the rest. Patterns name their variable segments in braces
(`/v1beta/models/{model}:generateContent`); a segment matches up to the next `/` and
the handler reads it from `request.params`. Each wire format keeps its routes in its own
module as a tuple of `Route`s; `simulator.app` joins them into one `Router`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from simulator.asgi import Receive, Scope, Send, read_body

if TYPE_CHECKING:
    from simulator.app import SimulatorApp

_SEGMENT = re.compile(r"\{(\w+)\}")


@dataclass(slots=True)
class Request:
    """What a handler may read of one HTTP request.

    Attributes:
        scope: The ASGI scope.
        receive: The ASGI receive channel (read the body with `body()`).
        params: The path segments a pattern named, e.g. `{"model": "gemini-2.0-flash"}`.
    """

    scope: Scope
    receive: Receive
    params: dict[str, str] = field(default_factory=dict)
    _headers: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """A request header by its lower-case name (the last one, when repeated)."""
        if self._headers is None:
            self._headers = {key.decode("latin-1").lower(): value.decode("latin-1")
                             for key, value in self.scope.get("headers", ())}
        return self._headers.get(name)

    def query(self, name: str) -> str | None:
        """A query parameter (the first one, when repeated)."""
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get(name)
        return values[0] if values else None

    async def body(self) -> bytes:
        """The whole request body."""
        return await read_body(self.receive)


Handler = Callable[["SimulatorApp", Request, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """`method` on `path` (exact, or a pattern with `{name}` segments) served by `handler`."""

    method: str
    path: str
    handler: Handler

    @property
    def is_pattern(self) -> bool:
        """Whether the path names variable segments."""
        return "{" in self.path


def _compile(path: str) -> re.Pattern[str]:
    pieces = _SEGMENT.split(path)
    # split() alternates literal text and segment names: escape the one, capture the other.
    regex = "".join(re.escape(piece) if index % 2 == 0 else f"(?P<{piece}>[^/]+?)"
                    for index, piece in enumerate(pieces))
    return re.compile(regex)


class Router:
    """Finds the route of a request; says why none fits (unknown path, or wrong method)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[re.Pattern[str], str, Handler]] = []
        for route in routes:
            if route.is_pattern:
                self._patterns.append((_compile(route.path), route.method, route.handler))
            else:
                self._exact.setdefault(route.path, {})[route.method] = route.handler

    def find(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        """The handler and path parameters for `method path`, else the methods it allows.

        Returns:
            `(handler, params, [])` when a route fits; `(None, {}, allowed)` otherwise,
            where `allowed` is empty for an unknown path.
        """
        by_method = self._exact.get(path)
        if by_method is not None:
            handler = by_method.get(method)
            return (handler, {}, []) if handler else (None, {}, sorted(by_method))
        allowed: list[str] = []
        for pattern, route_method, pattern_handler in self._patterns:
            matched = pattern.fullmatch(path)
            if matched is None:
                continue
            if route_method == method:
                return pattern_handler, matched.groupdict(), []
            allowed.append(route_method)
        return None, {}, sorted(set(allowed))

