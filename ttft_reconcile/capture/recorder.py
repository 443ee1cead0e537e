"""Per-stream state on the hot path, and the row it becomes off the event loop.

The hot path (`StreamRecorder.on_chunk`) only reads `time.monotonic_ns()` and keeps a
reference to the chunk; parsing and classification run later in the writer thread
(`build_row`). Past `retain_bytes` the recorder folds what it holds into the timeline
inline, so memory stays bounded for very long streams.

Clocks: LiteLLM's datetimes are naive local time; like LiteLLM's own SpendLogs writer we
convert them with `.astimezone(timezone.utc)` (naive → system local zone → UTC). The first
chunk's wall clock is read once with `datetime.now()`; every later instant is that value
plus a monotonic offset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from ttft_reconcile import __version__
from ttft_reconcile.capture.timeline import DEFAULT_MAX_OFFSETS, Timeline
from ttft_reconcile.capture.writer import TraceRow

DEFAULT_RETAIN_BYTES = 4 << 20
_SEQ_ATTR = "_ttft_capture_streams"  # per-call stream counter kept on LiteLLM's logging object


@dataclass(frozen=True, slots=True)
class StreamContext:
    """What LiteLLM knows about the call; datetimes as LiteLLM holds them (naive local)."""

    litellm_call_id: str | None
    stream_seq: int
    route: str | None
    call_type: str | None
    provider: str | None
    model: str | None
    litellm_version: str | None
    request_start: datetime | None
    api_call_start: datetime | None


def to_utc(value: object) -> datetime | None:
    """LiteLLM's datetime (naive = system local time) → aware UTC, as its SpendLogs writer does."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    raw = getattr(value, "value", value)  # enums such as CallTypes
    text = str(raw)
    return text[:200] if text else None


def _path_only(route: str | None) -> str | None:
    """A route or upstream URL without scheme, host or query (those may carry keys)."""
    if not route:
        return None
    path = urlsplit(route).path if "://" in route else route.split("?", 1)[0]
    return path[:200] or None


def _proxy_route(details: dict[str, Any]) -> str | None:
    """The proxy route the client called (set by LiteLLM's proxy; absent in the SDK)."""
    params = details.get("litellm_params")
    metadata = params.get("metadata") if isinstance(params, dict) else None
    route = metadata.get("user_api_key_request_route") if isinstance(metadata, dict) else None
    return route if isinstance(route, str) and route.startswith("/") else None


def context_from_logging(logging_obj: Any, route: str | None, litellm_version: str | None) -> StreamContext:
    """Read the call's ids and clocks from LiteLLM's logging object (every field optional)."""
    details = getattr(logging_obj, "model_call_details", None)
    details = details if isinstance(details, dict) else {}
    call_id = getattr(logging_obj, "litellm_call_id", None) or details.get("litellm_call_id")
    seq = getattr(logging_obj, _SEQ_ATTR, 0)
    seq = seq if isinstance(seq, int) else 0
    try:
        setattr(logging_obj, _SEQ_ATTR, seq + 1)
    except AttributeError:
        pass
    return StreamContext(
        litellm_call_id=_text(call_id),
        stream_seq=seq,
        route=_proxy_route(details) or _path_only(route),
        call_type=_text(getattr(logging_obj, "call_type", None) or details.get("call_type")),
        provider=_text(details.get("custom_llm_provider")),
        model=_text(getattr(logging_obj, "model", None) or details.get("model")),
        litellm_version=litellm_version,
        request_start=getattr(logging_obj, "start_time", None),
        api_call_start=details.get("api_call_start_time"),
    )


@dataclass(slots=True)
class StreamRecorder:
    """One upstream stream. Not thread-safe: the event loop owns it until `finish`."""

    context: StreamContext
    max_offsets: int = DEFAULT_MAX_OFFSETS
    retain_bytes: int = DEFAULT_RETAIN_BYTES
    chunks: list[tuple[int, Any]] = field(default_factory=list)
    retained: int = 0
    first_wall: datetime | None = None
    stamped_by: str | None = None
    outcome: str | None = None
    timeline: Timeline | None = None
    exposed_id: str | None = None  # the id LiteLLM shows clients, when it differs from the provider's

    def on_chunk(self, chunk: Any) -> bool:
        """Record one chunk's arrival; True when it was the stream's first chunk."""
        now_ns = time.monotonic_ns()
        first = self.first_wall is None
        if first:
            self.first_wall = datetime.now()  # naive local, the same clock LiteLLM stamps with
        self.chunks.append((now_ns, chunk))
        if isinstance(chunk, bytes | bytearray):
            self.retained += len(chunk)
            if self.retained > self.retain_bytes:
                self.fold()
        return first

    def fold(self) -> Timeline:
        """Move the held chunks into the timeline (parses and classifies them)."""
        if self.timeline is None:
            self.timeline = Timeline(max_offsets=self.max_offsets)
        timeline = self.timeline
        for now_ns, chunk in self.chunks:
            if isinstance(chunk, bytes | bytearray):
                timeline.feed(now_ns, bytes(chunk))
            elif isinstance(chunk, str):
                timeline.feed(now_ns, chunk.encode("utf-8", "surrogatepass"))
            else:
                timeline.feed(now_ns, b"")
        self.chunks = []
        self.retained = 0
        return timeline

    def finish(self, outcome: str) -> None:
        """Mark the stream over; the first outcome wins."""
        if self.outcome is None:
            self.outcome = outcome


def _outcome(observed: str | None, timeline: Timeline) -> str:
    """The relay's outcome, except that a 'completed' stream of a known format that ended without
    its end event, or carried a provider error event, was an upstream error (LiteLLM's transport
    can end a cut stream quietly)."""
    if observed is None:
        return "cancelled"
    if observed == "completed" and (timeline.error_seen or (timeline.known_format() and not timeline.terminal_seen)):
        return "upstream_error"
    return observed


def build_row(recorder: StreamRecorder) -> TraceRow:
    """The stream_traces row of a finished stream (runs in the writer thread)."""
    ctx = recorder.context
    timeline = recorder.fold()
    first_chunk_at = to_utc(recorder.first_wall)
    request_start_at = to_utc(ctx.request_start) or first_chunk_at or datetime.now(timezone.utc)

    def instant(t_ns: int | None) -> datetime | None:
        if t_ns is None or timeline.first_ns is None or first_chunk_at is None:
            return None
        return first_chunk_at + timedelta(microseconds=(t_ns - timeline.first_ns) // 1000)

    return TraceRow(
        litellm_call_id=ctx.litellm_call_id or "",
        stream_seq=ctx.stream_seq,
        response_id=recorder.exposed_id or timeline.response_id,
        route=ctx.route,
        call_type=ctx.call_type,
        provider=ctx.provider,
        model=ctx.model,
        litellm_version=ctx.litellm_version,
        capture_version=__version__,
        request_start_at=request_start_at,
        api_call_start_at=to_utc(ctx.api_call_start),
        first_chunk_at=first_chunk_at,
        first_event_at=instant(timeline.first_event_ns),
        first_output_at=instant(timeline.first_output_ns),
        first_visible_at=instant(timeline.first_visible_ns),
        last_chunk_at=instant(timeline.last_ns),
        chunk_count=timeline.chunk_count,
        event_count=timeline.event_count,
        bytes_total=timeline.bytes_total,
        outcome=_outcome(recorder.outcome, timeline),
        stamped_by=recorder.stamped_by,
        chunk_offsets_us=timeline.chunk_offsets_us,
        event_offsets_us=timeline.event_offsets_us,
        event_kinds=timeline.event_kinds,
        truncated=timeline.truncated,
    )
