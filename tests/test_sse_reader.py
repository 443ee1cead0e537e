"""The incremental SSE reader: split invariance, line endings, comments, junk (pure, hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ttft_reconcile.capture.sse import SseEvent, SseReader


def read_all(chunks: list[bytes], max_line: int = 1 << 20) -> list[tuple[int, SseEvent]]:
    """Feed chunks; return (index of the chunk that completed it, event) pairs."""
    reader = SseReader(max_line=max_line)
    out: list[tuple[int, SseEvent]] = []
    for index, chunk in enumerate(chunks):
        out.extend((index, event) for event in reader.feed(chunk))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for point in points + [len(data)]:
        parts.append(data[last:point])
        last = point
    return parts


def chunk_of(parts: list[bytes], offset: int) -> int:
    """Index of the part holding the byte at stream offset `offset - 1`."""
    total = 0
    for index, part in enumerate(parts):
        total += len(part)
        if offset <= total and part:
            return index
    raise AssertionError("offset past the end")


line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])
value = st.binary(max_size=12).filter(lambda b: b"\n" not in b and b"\r" not in b)
field_line = st.one_of(
    st.builds(lambda v: b"data: " + v, value),
    st.builds(lambda v: b"data:" + v, value),
    st.builds(lambda v: b"event: " + v, value),
    st.builds(lambda v: b": " + v, value),  # comment / keep-alive
    st.just(b"data"),
    st.just(b"id: 7"),
    st.just(b"retry: 100"),
    st.just(b""),  # blank line: dispatch
    value,
)
stream = st.lists(st.tuples(field_line, line_end), max_size=30).map(lambda ls: b"".join(a + b for a, b in ls))


@settings(max_examples=400, deadline=None)
@given(stream, st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_split_gives_the_same_events_at_the_same_bytes(data: bytes, cuts: list[int]) -> None:
    whole = [event for _, event in read_all([data])]
    parts = split(data, cuts)
    pieces = read_all(parts)
    assert [event for _, event in pieces] == whole
    for index, event in pieces:
        # an event is reported by the feed call whose chunk holds the byte that completed it
        assert index == chunk_of(parts, event.end)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_binary_junk_never_raises(chunks: list[bytes]) -> None:
    reader = SseReader(max_line=32)
    for chunk in chunks:
        for event in reader.feed(chunk):
            assert isinstance(event.data, bytes)
    assert reader.close() == []


def test_all_three_line_endings_and_a_crlf_split_across_chunks() -> None:
    for sep in (b"\n", b"\r\n", b"\r"):
        data = b"event: ping" + sep + b'data: {"type":"ping"}' + sep + sep
        events = [e for _, e in read_all([data])]
        assert [(e.name, e.data) for e in events] == [("ping", b'{"type":"ping"}')]
    # "\r" ends one chunk, "\n" starts the next: one line end, not a blank line
    events = read_all([b"data: a\r", b"\ndata: b\r", b"\n\r\n"])
    assert [(i, e.data) for i, e in events] == [(2, b"a\nb")]


def test_multiline_data_comments_done_and_event_without_data() -> None:
    data = (b": keep-alive\n\n"  # a comment alone is no event
            b"event: orphan\n\n"  # an event name without data is no event
            b"data: line1\ndata: line2\n\n"
            b"data: [DONE]\n\n")
    events = [e for _, e in read_all([data])]
    assert [(e.name, e.data) for e in events] == [("", b"line1\nline2"), ("", b"[DONE]")]


def test_event_spanning_chunks_is_reported_when_its_blank_line_arrives() -> None:
    events = read_all([b"event: message_start\nda", b"ta: {\"a\"", b":1}\n", b"\n"])
    assert [(i, e.name, e.data) for i, e in events] == [(3, "message_start", b'{"a":1}')]


def test_bom_is_skipped_even_when_split() -> None:
    events = read_all([b"\xef", b"\xbb\xbfdata: x\n\n"])
    assert [e.data for _, e in events] == [b"x"]


def test_incomplete_event_at_end_is_discarded() -> None:
    reader = SseReader()
    assert reader.feed(b"data: partial\n") == []
    assert reader.close() == []


def test_overlong_lines_are_dropped_whatever_the_split() -> None:
    long = b"data: " + b"x" * 100 + b"\n"
    data = long + b"data: ok\n\n"
    whole = [e.data for _, e in read_all([data], max_line=50)]
    pieces = [e.data for _, e in read_all([data[:30], data[30:80], data[80:]], max_line=50)]
    assert whole == pieces == [b"ok"]
