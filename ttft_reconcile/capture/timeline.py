"""Per-stream timeline: transport chunks with monotonic arrival times → counts, offsets, instants.

Pure. Times are `time.monotonic_ns()` readings; every offset is relative to the first chunk
and reported in integer microseconds. An event's instant is the arrival of the chunk that
completed it. The evidence arrays are capped; counts and instants stay exact past the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttft_reconcile.capture import classify as kinds
from ttft_reconcile.capture.sse import SseEvent, SseReader

DEFAULT_MAX_OFFSETS = 64


@dataclass
class Timeline:
    """Accumulates one stream; feed chunks in arrival order."""

    max_offsets: int = DEFAULT_MAX_OFFSETS
    first_ns: int | None = None
    last_ns: int | None = None
    chunk_count: int = 0
    event_count: int = 0
    bytes_total: int = 0
    first_event_ns: int | None = None
    first_output_ns: int | None = None
    first_visible_ns: int | None = None
    response_id: str | None = None
    chunk_offsets_us: list[int] = field(default_factory=list)
    event_offsets_us: list[int] = field(default_factory=list)
    event_kinds: list[str] = field(default_factory=list)
    truncated: bool = False
    terminal_seen: bool = False  # the format's end event arrived (message_stop, response.completed, [DONE])
    error_seen: bool = False  # the provider sent an error event
    reader: SseReader = field(default_factory=SseReader)

    def feed(self, t_ns: int, chunk: bytes) -> None:
        """Record one transport chunk that arrived at monotonic time `t_ns`."""
        if self.first_ns is None:
            self.first_ns = t_ns
        self.last_ns = t_ns
        self.chunk_count += 1
        self.bytes_total += len(chunk)
        offset_us = (t_ns - self.first_ns) // 1000
        if len(self.chunk_offsets_us) < self.max_offsets:
            self.chunk_offsets_us.append(offset_us)
        else:
            self.truncated = True
        for event in self.reader.feed(chunk):
            self._event(t_ns, offset_us, event)

    def _event(self, t_ns: int, offset_us: int, event: SseEvent) -> None:
        kind, ident, terminal = kinds.classify(event)
        self.terminal_seen = self.terminal_seen or terminal
        self.error_seen = self.error_seen or kind == kinds.ERROR
        self.event_count += 1
        if self.response_id is None and ident is not None:
            self.response_id = ident
        if self.first_event_ns is None:
            self.first_event_ns = t_ns
        if kind in (kinds.OUTPUT, kinds.VISIBLE) and self.first_output_ns is None:
            self.first_output_ns = t_ns
        if kind == kinds.VISIBLE and self.first_visible_ns is None:
            self.first_visible_ns = t_ns
        if len(self.event_kinds) < self.max_offsets:
            self.event_offsets_us.append(offset_us)
            self.event_kinds.append(kind)
        else:
            self.truncated = True

    def known_format(self) -> bool:
        """True when some event was recognised (so a missing end event means a cut stream)."""
        return self.first_event_ns is not None and (self.response_id is not None or self.first_output_ns is not None)
