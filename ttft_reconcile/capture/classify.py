"""One SSE event → one event kind (policies.EVENT_KINDS) and the response id it reveals.

Implements DESIGN.md's policy table for Anthropic Messages, OpenAI Responses and
OpenAI-style chat chunks. Anything else is `unknown` (it still counts for `first_event`).
Only the `type`-like fields are looked at; content is parsed in memory and never kept.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ttft_reconcile.capture.sse import SseEvent

FRAMING = "framing"
PING = "ping"
OUTPUT = "output"
VISIBLE = "visible"
ERROR = "error"
UNKNOWN = "unknown"

_ANTHROPIC_FRAMING = frozenset(
    {"message_start", "content_block_start", "content_block_stop", "message_delta", "message_stop"}
)
_ANTHROPIC_DELTAS = {
    "text_delta": VISIBLE,
    "thinking_delta": OUTPUT,
    "input_json_delta": OUTPUT,
    "citations_delta": OUTPUT,
    "signature_delta": FRAMING,
}
_RESPONSES_VISIBLE = frozenset({"response.output_text.delta", "response.refusal.delta"})
_RESPONSES_OUTPUT = frozenset({"response.function_call_arguments.delta"})
_RESPONSES_FRAMING_PREFIXES = (
    "response.created",
    "response.in_progress",
    "response.queued",
    "response.output_item.",
    "response.content_part.",
    "response.completed",
    "response.incomplete",
)
_RESPONSES_ERRORS = frozenset({"error", "response.failed"})
# Events that end a stream of a format that has one; a stream that stops without it was cut.
TERMINAL_TYPES = frozenset({"message_stop", "response.completed", "response.incomplete", "response.failed"})


class Classified(NamedTuple):
    """kind: one of policies.EVENT_KINDS; response_id: an id the event reveals; terminal: the
    event that ends a well-formed stream of its format (message_stop, response.completed, [DONE])."""

    kind: str
    response_id: str | None
    terminal: bool


def classify(event: SseEvent) -> Classified:
    """Classify one dispatched event."""
    data = event.data
    if data == b"[DONE]":
        return Classified(FRAMING, None, True)
    try:
        obj = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        return Classified(UNKNOWN, None, False)
    if not isinstance(obj, dict):
        return Classified(UNKNOWN, None, False)
    kind = obj.get("type")
    if isinstance(kind, str):
        found = _responses(kind, obj) if kind.startswith("response.") or kind in _RESPONSES_ERRORS else _anthropic(
            kind, obj)
        return Classified(found[0], found[1], kind in TERMINAL_TYPES)
    if obj.get("object") == "chat.completion.chunk" or isinstance(obj.get("choices"), list):
        return Classified(*_chat_chunk(obj), False)
    if "error" in obj:
        return Classified(ERROR, None, False)
    return Classified(UNKNOWN, None, False)


def _anthropic(kind: str, obj: dict[str, Any]) -> tuple[str, str | None]:
    if kind == "content_block_delta":
        delta = obj.get("delta")
        delta_type = delta.get("type") if isinstance(delta, dict) else None
        return _ANTHROPIC_DELTAS.get(delta_type, UNKNOWN) if isinstance(delta_type, str) else UNKNOWN, None
    if kind == "message_start":
        message = obj.get("message")
        ident = message.get("id") if isinstance(message, dict) else None
        return FRAMING, ident if isinstance(ident, str) and ident else None
    if kind in _ANTHROPIC_FRAMING:
        return FRAMING, None
    if kind == "ping":
        return PING, None
    if kind == "error":
        return ERROR, None
    return UNKNOWN, None


def _responses(kind: str, obj: dict[str, Any]) -> tuple[str, str | None]:
    if kind in _RESPONSES_VISIBLE:
        return VISIBLE, None
    if kind in _RESPONSES_OUTPUT or (kind.startswith("response.reasoning") and kind.endswith(".delta")):
        return OUTPUT, None
    if kind in _RESPONSES_ERRORS:
        return ERROR, None
    if kind.startswith(_RESPONSES_FRAMING_PREFIXES) or kind.endswith(".done"):
        ident = None
        if kind == "response.created":
            response = obj.get("response")
            found = response.get("id") if isinstance(response, dict) else None
            ident = found if isinstance(found, str) and found else None
        return FRAMING, ident
    return UNKNOWN, None


def _chat_chunk(obj: dict[str, Any]) -> tuple[str, str | None]:
    found = obj.get("id")
    ident = found if isinstance(found, str) and found else None
    kind = FRAMING
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        content = delta.get("content")
        if isinstance(content, str) and content:
            return VISIBLE, ident
        if delta.get("tool_calls") or delta.get("reasoning_content"):
            kind = OUTPUT
    if kind == FRAMING and "error" in obj:
        kind = ERROR
    return kind, ident
