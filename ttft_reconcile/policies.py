"""The four TTFT policies and the event-kind vocabulary (the one module that owns both).

A policy names the instant taken as "first token". The capture computes every policy's
instant once, from the stream, and stores it in `stream_traces`; the job reads the column
and never re-classifies events.
"""

from __future__ import annotations

from typing import Final

# policy name -> stream_traces column holding its instant (timestamptz)
POLICY_COLUMNS: Final[dict[str, str]] = {
    "first_chunk": "first_chunk_at",
    "first_event": "first_event_at",
    "first_output": "first_output_at",
    "first_visible": "first_visible_at",
}
POLICIES: Final[tuple[str, ...]] = tuple(POLICY_COLUMNS)
DEFAULT_POLICY: Final = "first_chunk"

POLICY_HELP: Final[dict[str, str]] = {
    "first_chunk": "first upstream bytes of any kind (what LiteLLM >= 1.93 stamps; the default)",
    "first_event": "first complete SSE data event (comments and keep-alives excluded; Anthropic ping counts)",
    "first_output": "first event carrying generated content (text, thinking, tool-call arguments, citations)",
    "first_visible": "first answer text only (Anthropic text_delta, Responses output_text/refusal delta)",
}

# Event kinds stored in stream_traces.event_kinds. Fixed vocabulary; see capture/classify.py.
EVENT_KINDS: Final[tuple[str, ...]] = (
    "framing",  # message_start, content_block_start/stop, response.created, [DONE], ...
    "ping",  # Anthropic ping: a data event, not output
    "output",  # generated content that is not answer text (thinking, tool arguments, ...)
    "visible",  # answer text (also output)
    "error",  # an error event from the provider
    "unknown",  # a data event in a format the classifier does not know
)
