"""One synthetic stream trace as a `stream_traces` COPY line, with its chunk and event evidence.

The event structure follows each wire format (Anthropic Messages, OpenAI Responses, OpenAI chat
chunks, and a format the classifier does not know); kinds come from `policies.EVENT_KINDS`.
Offsets are integer microseconds from the first chunk; arrays stop at `EVIDENCE_CAP` entries
(`truncated` says so) while the counts stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

from ttft_reconcile.policies import EVENT_KINDS

EVIDENCE_CAP: Final = 64
NULL: Final = "\\N"
FRAMING, PING, OUTPUT, VISIBLE, ERROR, UNKNOWN = EVENT_KINDS
_EVENT_BYTES: Final[dict[str, int]] = {FRAMING: 180, PING: 40, OUTPUT: 150, VISIBLE: 140, ERROR: 160,
                                       UNKNOWN: 200}
_FAILED: Final = frozenset({"zero", "error_first", "framing_error"})

# (first instant µs, gap µs, count, kind) -- a run of evenly spaced events or chunks
Segment = tuple[float, float, int, str]


@dataclass(slots=True)
class Stream:
    """A trace row. Instant fields are ready-made `timestamptz` text (or NULL); `offsets` holds the
    same five policy-relevant instants as epoch µs floats: first chunk, first event, first output,
    first visible, last chunk (NaN = none)."""

    call_id: str
    seq: int
    response_id: str | None
    route: str
    call_type: str
    provider: str
    model: str
    version: str
    request_start: str
    api_start: str
    first_chunk: str
    first_event: str
    first_output: str
    first_visible: str
    last_chunk: str
    recorded: str
    fmt: str
    variant: str  # normal | single | zero | error_first | framing_error | tool_only
    thinking: bool
    keepalive: bool
    n_visible: int
    n_think: int
    offsets: tuple[float, float, float, float, float]
    evidence: bool

    def with_seq(self, seq: int) -> Stream:
        return replace(self, seq=seq)


def _run(first: float, until: float, count: int, kind: str) -> Segment:
    gap = (until - first) / (count - 1) if count > 1 else 0.0
    return (first, max(gap, 0.0), count, kind)


def _segments(s: Stream) -> tuple[list[Segment], list[Segment]]:
    """(events, chunks) of the stream as runs."""
    fc, fe, fo, fv, last = s.offsets
    if s.variant == "zero":
        return [], []
    if s.variant == "error_first":
        return [(fc, 0.0, 1, ERROR)], [(fc, 0.0, 1, "")]
    chunks: list[Segment] = [(fc, 0.0, 1, "")]
    if s.keepalive and fe > fc:
        chunks.append((fe, 0.0, 1, ""))
    if s.fmt == "unknown":
        if s.variant == "framing_error":
            return [(fe, 0.0, 1, UNKNOWN), (last, 0.0, 1, ERROR)], chunks + [(last, 0.0, 1, "")]
        n = max(1, s.n_visible) if s.variant != "single" else 1
        run = _run(fe, last, n, UNKNOWN)
        return [run], [run] if s.variant != "single" else chunks
    head = {"anthropic": [(fe, 0.0, 1, FRAMING), (fe, 0.0, 1, PING)], "responses": [(fe, 0.0, 2, FRAMING)]}.get(
        s.fmt, [(fe, 0.0, 1, FRAMING)]
    )
    tail_count = {"anthropic": 3, "responses": 4}.get(s.fmt, 2)
    if s.variant == "framing_error":
        return head + [(last, 0.0, 1, ERROR)], chunks + [(last, 0.0, 1, "")]
    if s.variant == "single":
        return head + [(fc, 0.0, 1, FRAMING), (fc, 0.0, 1, VISIBLE), (fc, 0.0, tail_count, FRAMING)], chunks
    events = list(head)
    if s.thinking and not math.isnan(fv) and fv > fo:
        think = _run(fo, fv - 3000, max(1, s.n_think), OUTPUT)
        events += [(fo, 0.0, 1, FRAMING), think, (fv - 2000, 0.0, 2, FRAMING)]
        chunks.append(think)
        start = fv
    else:
        start = fo
    tool = s.variant == "tool_only" or math.isnan(fv)
    if s.fmt != "openai_chat":
        events.append((start - (1000 if s.fmt == "responses" else 0), 0.0, 2 if s.fmt == "responses" else 1, FRAMING))
    deltas = _run(start, last - 2000, max(1, s.n_visible), OUTPUT if tool else VISIBLE)
    events += [deltas, (last, 0.0, tail_count, FRAMING)]
    chunks += [deltas, (last, 0.0, 1, "")]
    return events, chunks


def _expand(segments: list[Segment], origin: float, cap: int) -> tuple[list[int], list[str], int]:
    """Offsets (µs from `origin`; every run starts at or after it) and kinds of the first `cap` items."""
    offsets: list[int] = []
    kinds: list[str] = []
    total = 0
    for first, gap, count, kind in segments:
        total += count
        take = min(count, cap - len(offsets))
        if take > 0:
            start, step = int(first - origin), int(gap)
            offsets.extend(range(start, start + take * step, step) if step > 0 else [start] * take)
            kinds.extend([kind] * take)
    return offsets, kinds, total


def stream_row(s: Stream) -> str:
    """The COPY text line (tab-separated, newline-terminated) for `ttft_reconcile.stream_traces`."""
    events, chunks = _segments(s)
    fc = s.offsets[0]
    cap = EVIDENCE_CAP if s.evidence else 0
    event_offsets, kinds, event_count = _expand(events, fc, cap)
    chunk_offsets, _, chunk_count = _expand(chunks, fc, cap)
    size = sum(_EVENT_BYTES[kind] * count for _, _, count, kind in events) + (400 if s.fmt == "anthropic" else 0)
    if chunk_count == 0:
        size = 0
    truncated = s.evidence and (event_count > EVIDENCE_CAP or chunk_count > EVIDENCE_CAP)
    if s.evidence and chunk_count:
        chunk_text = "{" + ",".join(map(str, chunk_offsets)) + "}"
        event_text = "{" + ",".join(map(str, event_offsets)) + "}" if event_count else "{}"
        kind_text = "{" + ",".join(kinds) + "}" if event_count else "{}"
    else:
        chunk_text = event_text = kind_text = NULL
    fields = (
        s.call_id, str(s.seq), s.response_id or NULL, s.route, s.call_type, s.provider, s.model, s.version,
        CAPTURE_VERSION, s.request_start, s.api_start, s.first_chunk, s.first_event, s.first_output,
        s.first_visible, s.last_chunk, str(chunk_count), str(event_count), str(size),
        "upstream_error" if s.variant in _FAILED else "completed", chunk_text, event_text, kind_text,
        "t" if truncated else "f", s.recorded,
    )
    return "\t".join(fields) + "\n"


CAPTURE_VERSION: Final = "synthetic"
