"""A `multipart/form-data` upload read as it streams: small fields kept in memory, the one
file part handed on chunk by chunk and never spooled.

Starlette's `request.form()` writes the whole file part to a temporary file before the route
sees it, so a size limit could only be checked once the whole body was on disk. Here the
route stores the part while it arrives and stops reading the moment a limit is crossed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from broker.errors import InvalidRequest, PayloadTooLarge

MAX_FIELDS = 16
MAX_FIELD_BYTES = 64 * 1024
FIELDS_ALLOWANCE = MAX_FIELDS * MAX_FIELD_BYTES
"""What a body may carry beside its file: fields, part headers, boundaries."""


class MultipartUpload:
    """The fields and the file part (`file_field`) of one request's multipart body.

    Args:
        request: a request whose content type is `multipart/form-data`.
        max_bytes: the most the body may hold (file and fields); reading stops past it.

    Raises:
        InvalidRequest: no boundary in the content type.
        PayloadTooLarge: the declared `content-length` is over `max_bytes` (nothing read).
    """

    def __init__(self, request: Request, max_bytes: int, file_field: str = "file"):
        _, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidRequest("The multipart/form-data content type has no boundary.",
                                 param="file")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLarge(int(declared), max_bytes)
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._file_field = file_field
        self._max_bytes = max_bytes
        self._read = 0
        self._body = request.stream()
        self._data: deque[bytes] = deque()  # of the file part, parsed but not handed on
        self._state = "before"  # before, in or after the file part
        self._ended = False
        self._part: str | None = None  # "file", or the name of the field being read
        self._field = bytearray()
        self._header = (bytearray(), bytearray())
        self._disposition = b""
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._header[0].extend(
                data[start:end]),
            "on_header_value": lambda data, start, end: self._header[1].extend(
                data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        })

    async def file(self) -> str | None:
        """Read up to the start of the file part; its filename.

        Raises:
            InvalidRequest: the body has no file part.
        """
        while self._state == "before":
            if not await self._read_more():
                raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        return self.filename

    async def content(self) -> AsyncIterator[bytes]:
        """The file part's bytes as they arrive; then the rest of the body (fields after the
        file land in `fields`). Call `file()` first."""
        while True:
            while self._data:
                yield self._data.popleft()
            if self._state == "after":
                break
            if not await self._read_more():
                raise InvalidRequest("The upload ended before its file did.", param="file")
        while await self._read_more():
            pass
        if not self._ended:
            raise InvalidRequest("The multipart body is truncated.", param="file")

    async def _read_more(self) -> bool:
        """Parse the next chunk of the body; False once the body is over."""
        if self._ended:
            return False
        chunk = await anext(aiter(self._body), None)
        if chunk is None:
            return False
        self._read += len(chunk)
        if self._read > self._max_bytes:
            raise PayloadTooLarge(self._read, self._max_bytes)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"The multipart body is malformed: {exc}", param="file") from exc
        return True

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _on_header_end(self) -> None:
        name, value = self._header
        if bytes(name).lower() == b"content-disposition":
            self._disposition = bytes(value)
        name.clear()
        value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if name == self._file_field and b"filename" in options:
            if self._state != "before":
                raise InvalidRequest("Upload one file per request.", param="file")
            self._state, self._part = "in", "file"
            self.filename = options[b"filename"].decode("utf-8", errors="replace")
            return
        if len(self.fields) >= MAX_FIELDS:
            raise InvalidRequest(f"The upload has more than {MAX_FIELDS} fields.")
        self._part = name
        self._field.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._data.append(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"The field '{self._part}' is over {MAX_FIELD_BYTES} bytes.",
                                 param=self._part)

    def _on_part_end(self) -> None:
        if self._part == "file":
            self._state = "after"
        elif self._part is not None:
            self.fields[self._part] = self._field.decode("utf-8", errors="replace")
        self._part = None

    def _on_end(self) -> None:
        self._ended = True
