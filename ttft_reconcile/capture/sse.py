"""Incremental Server-Sent Events reader: bytes in, complete data events out.

Pure and allocation-light. Follows the WHATWG event-stream rules: lines end with
``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r\\n`` pair split across two transport chunks is one
line end); ``:`` lines are comments (keep-alives); ``data:`` lines accumulate; a blank line
dispatches the event if it has data; a leading BOM is skipped. Never raises on junk:
undecodable bytes stay bytes, over-long lines are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE = 1 << 20  # bytes; longer lines are dropped (counted in `oversized`)


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event.

    `name` is the `event:` field ('' when absent), `data` the `data:` lines joined by
    ``\\n``, `end` the stream offset (bytes) just past the first byte of the blank line's
    terminator — the byte whose arrival completed the event.
    """

    name: str
    data: bytes
    end: int


class SseReader:
    """Feed transport chunks in order; each call returns the events they completed."""

    __slots__ = ("_pending", "_skip_lf", "_offset", "_name", "_data", "_has_data", "_started",
                 "_dropping", "max_line", "oversized")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._pending = b""  # the unterminated tail of the last chunk
        self._skip_lf = False  # the previous chunk ended in \r: a leading \n is part of it
        self._offset = 0  # stream offset of the first byte of the next chunk
        self._name = ""
        self._data: list[bytes] = []
        self._has_data = False
        self._started = False
        self._dropping = False  # inside an over-long line: ignore until its end
        self.max_line = max_line
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume `chunk`; return the events whose terminating blank line it completed."""
        events: list[SseEvent] = []
        if not chunk:
            return events
        base = self._offset - len(self._pending)  # stream offset of buf[0]
        self._offset += len(chunk)
        buf = self._pending + chunk if self._pending else chunk
        pos = 0
        if self._skip_lf:
            self._skip_lf = False
            if buf[:1] == b"\n":
                pos = 1
        if not self._started:
            if len(buf) - pos < len(_BOM) and _BOM.startswith(buf[pos:]):
                self._pending = buf[pos:]
                return events  # cannot tell yet whether this is a BOM
            self._started = True
            if buf.startswith(_BOM, pos):
                pos += len(_BOM)
        size = len(buf)
        find = buf.find
        while pos < size:
            lf = find(b"\n", pos)
            cr = find(b"\r", pos, lf if lf >= 0 else size)
            end = cr if cr >= 0 else lf
            if end < 0:
                break
            line = buf[pos:end]
            if len(line) > self.max_line:
                self.oversized += 1
                self._dropping = True
            if end + 1 == size and cr >= 0:
                self._skip_lf = True
                pos = size
            else:
                pos = end + 2 if (cr >= 0 and buf[end + 1 : end + 2] == b"\n") else end + 1
            if self._dropping:
                self._dropping = False
                continue
            if line:
                self._field(line)
            elif self._has_data:
                events.append(SseEvent(self._name, b"\n".join(self._data), base + end + 1))
                self._reset()
            else:
                self._name = ""
        rest = buf[pos:]
        if len(rest) > self.max_line:
            self.oversized += 1
            self._dropping = True
            rest = b""
        self._pending = rest
        return events

    def close(self) -> list[SseEvent]:
        """End of stream: an event without its blank line is discarded (per the standard)."""
        self._pending = b""
        self._reset()
        return []

    def _reset(self) -> None:
        self._name = ""
        self._data = []
        self._has_data = False

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return  # comment / keep-alive
        colon = line.find(b":")
        if colon < 0:
            field, value = line, b""
        else:
            field = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._has_data = True
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")
        # `id` and `retry` carry nothing we record; unknown fields are ignored.
