"""Where the capture attaches to LiteLLM, per release, and the relay every hook shares.

Paths (metric label → what is patched):

- `messages_pass_through`: `PassThroughStreamingHandler.chunk_processor` — native
  `/v1/messages` for Anthropic, Vertex AI, Azure AI and Minimax, and generic pass-through
  routes (`url_route` / `endpoint_type` tell them apart).
- `messages_bedrock`: `BaseAnthropicMessagesStreamingIterator.async_sse_wrapper` — Bedrock
  invoke `/v1/messages` (module moved: `experimental_pass_through` → `pass_through` →
  `messages.native`).
- `messages_agentic`: `AgenticAnthropicStreamingIterator._process_agentic_hooks` — a
  follow-up stream the agentic loop chains after the first one (the first stream is already
  seen by `chunk_processor` / `async_sse_wrapper`); absent before LiteLLM 1.83.14.
- `responses`: `ResponsesAPIStreamingIterator.__init__` — wraps the upstream response's
  `aiter_bytes`, so transport chunks are seen before LiteLLM's line or event decoding.

The relay (`observe`) yields every chunk object unchanged; everything it does besides is
guarded, so a recorder failure is counted and the stream goes on untouched.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ttft_reconcile.capture.recorder import StreamRecorder

log = logging.getLogger(__name__)

PATHS: tuple[str, ...] = ("messages_pass_through", "messages_bedrock", "messages_agentic", "responses")
OPTIONAL_PATHS = frozenset({"messages_agentic"})

_PASS_THROUGH_MODULE = "litellm.proxy.pass_through_endpoints.streaming_handler"
_MESSAGES_PACKAGES = (
    "litellm.llms.anthropic.messages.native",
    "litellm.llms.anthropic.pass_through.messages",
    "litellm.llms.anthropic.experimental_pass_through.messages",
)
_RESPONSES_MODULE = "litellm.responses.streaming_iterator"
_OBSERVED: weakref.WeakSet[Any] = weakref.WeakSet()  # relays already recording a stream


class Recording(Protocol):
    """What the hooks need from the running capture (see capture/__init__.py)."""

    def open(self, logging_obj: Any, route: str | None, litellm_stamps: bool) -> StreamRecorder | None: ...

    def first_chunk(self, recorder: StreamRecorder, logging_obj: Any, litellm_stamps: bool) -> None: ...

    def finish(self, recorder: StreamRecorder, outcome: str, exposed_id: str | None = None) -> None: ...

    def failed(self) -> None: ...


@dataclass
class Patch:
    """One replaced class attribute, with what to put back."""

    path: str
    owner: type
    attr: str
    original: Any

    def undo(self) -> None:
        setattr(self.owner, self.attr, self.original)


def _replace(path: str, owner: type, attr: str, replacement: Any) -> Patch:
    patch = Patch(path, owner, attr, owner.__dict__[attr])
    setattr(owner, attr, replacement)
    return patch


def observe(inner: AsyncIterator[Any], recording: Recording, logging_obj: Any, route: str | None,
            litellm_stamps: bool, exposed_id: Callable[[], object] | None = None) -> AsyncIterator[Any]:
    """Relay `inner` chunk for chunk, recording arrival times; never alters what is yielded.

    `exposed_id`, read when the stream ends, returns the response id LiteLLM shows clients
    when it is not the provider's (the Responses API re-encodes it).
    """
    relay = _relay(inner, recording, logging_obj, route, litellm_stamps, exposed_id)
    _OBSERVED.add(relay)
    return relay


async def _relay(inner: AsyncIterator[Any], recording: Recording, logging_obj: Any, route: str | None,
                 litellm_stamps: bool, exposed_id: Callable[[], object] | None) -> AsyncIterator[Any]:
    recorder: StreamRecorder | None = None
    broken = False
    outcome = "upstream_error"
    try:
        async for chunk in inner:
            if not broken:
                try:
                    if recorder is None:
                        recorder = recording.open(logging_obj, route, litellm_stamps)
                        broken = recorder is None
                    if recorder is not None and recorder.on_chunk(chunk):
                        recording.first_chunk(recorder, logging_obj, litellm_stamps)
                except Exception:  # never let the trace hurt the stream
                    broken = True
                    recorder = None
                    recording.failed()
            yield chunk
        outcome = "completed"
    except GeneratorExit:
        outcome = "client_disconnected"
        closer = getattr(inner, "aclose", None)
        if closer is not None:
            await closer()  # what the consumer's close would have done to `inner` unpatched
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        if recorder is not None:
            try:
                shown = exposed_id() if exposed_id is not None else None
                recording.finish(recorder, outcome, shown if isinstance(shown, str) and shown else None)
            except Exception:
                recording.failed()


def _import(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except Exception as error:  # a missing optional dependency of LiteLLM, or another layout
        log.debug("ttft capture: cannot import %s: %s", name, error)
        return None


def _find_class(modules: tuple[str, ...], name: str) -> type | None:
    for module_name in modules:
        module = _import(module_name)
        found = getattr(module, name, None) if module is not None else None
        if isinstance(found, type):
            return found
    return None


def _source_mentions(obj: Any, text: str) -> bool:
    try:
        return text in inspect.getsource(obj)
    except (OSError, TypeError):
        return False


def _patch_chunk_processor(recording: Recording) -> Patch | None:
    module = _import(_PASS_THROUGH_MODULE)
    owner = getattr(module, "PassThroughStreamingHandler", None) if module is not None else None
    raw = owner.__dict__.get("chunk_processor") if isinstance(owner, type) else None
    if not isinstance(raw, staticmethod) or not isinstance(owner, type):
        return None
    original = raw.__func__
    litellm_stamps = hasattr(owner, "_stamp_first_chunk_if_needed")
    signature = inspect.signature(original)
    if "litellm_logging_obj" not in signature.parameters or "url_route" not in signature.parameters:
        return None

    def chunk_processor(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        inner = original(*args, **kwargs)
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
            return observe(inner, recording, bound.get("litellm_logging_obj"), _text(bound.get("url_route")),
                           litellm_stamps)
        except Exception:
            recording.failed()
            return inner

    chunk_processor.__wrapped__ = original  # type: ignore[attr-defined]
    return _replace("messages_pass_through", owner, "chunk_processor", staticmethod(chunk_processor))


def _patch_sse_wrapper(recording: Recording) -> Patch | None:
    owner = _find_class(tuple(p + ".streaming_iterator" for p in _MESSAGES_PACKAGES),
                        "BaseAnthropicMessagesStreamingIterator")
    original = owner.__dict__.get("async_sse_wrapper") if owner is not None else None
    if owner is None or not inspect.isasyncgenfunction(original):
        return None

    def async_sse_wrapper(self: Any, completion_stream: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        inner = original(self, completion_stream, *args, **kwargs)
        try:
            # 1.83.9+ stamps its own completion_start_time before the first chunk reaches us.
            stamps = hasattr(self, "completion_start_time")
            return observe(inner, recording, getattr(self, "litellm_logging_obj", None), "/v1/messages", stamps)
        except Exception:
            recording.failed()
            return inner

    async_sse_wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    return _replace("messages_bedrock", owner, "async_sse_wrapper", async_sse_wrapper)


def _patch_agentic(recording: Recording) -> Patch | None:
    owner = _find_class(tuple(p + ".agentic_streaming_iterator" for p in _MESSAGES_PACKAGES),
                        "AgenticAnthropicStreamingIterator")
    original = owner.__dict__.get("_process_agentic_hooks") if owner is not None else None
    if owner is None or not inspect.iscoroutinefunction(original):
        return None

    async def _process_agentic_hooks(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        try:
            follow_up = getattr(self, "_follow_up_iterator", None)
            if follow_up is not None and follow_up not in _OBSERVED:
                self._follow_up_iterator = observe(follow_up, recording, getattr(self, "_logging_obj", None),
                                                   "/v1/messages#agentic", True)
        except Exception:
            recording.failed()
        return result

    _process_agentic_hooks.__wrapped__ = original  # type: ignore[attr-defined]
    return _replace("messages_agentic", owner, "_process_agentic_hooks", _process_agentic_hooks)


def _patch_responses(recording: Recording) -> Patch | None:
    module = _import(_RESPONSES_MODULE)
    owner = getattr(module, "ResponsesAPIStreamingIterator", None) if module is not None else None
    original = owner.__dict__.get("__init__") if isinstance(owner, type) else None
    if not isinstance(owner, type) or not callable(original):
        return None
    base = getattr(module, "BaseResponsesAPIStreamingIterator", owner)
    litellm_stamps = _source_mentions(getattr(base, "_process_chunk", None), "completion_start_time")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        response = kwargs.get("response", args[0] if args else None)
        try:
            _wrap_aiter_bytes(response, self, recording, litellm_stamps)
        except Exception:
            recording.failed()
        original(self, *args, **kwargs)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return _replace("responses", owner, "__init__", __init__)


def _wrap_aiter_bytes(response: Any, iterator: Any, recording: Recording, litellm_stamps: bool) -> None:
    source: Callable[..., AsyncIterator[bytes]] | None = getattr(response, "aiter_bytes", None)
    if source is None or getattr(source, "_ttft_capture", False):
        return

    def aiter_bytes(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        inner = source(*args, **kwargs)
        try:
            return observe(inner, recording, getattr(iterator, "logging_obj", None), "/v1/responses",
                           litellm_stamps, lambda: _completed_response_id(iterator))
        except Exception:
            recording.failed()
            return inner

    aiter_bytes._ttft_capture = True  # type: ignore[attr-defined]
    response.aiter_bytes = aiter_bytes


def _completed_response_id(iterator: Any) -> object:
    completed = getattr(iterator, "completed_response", None)
    return getattr(getattr(completed, "response", None), "id", None)


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


_PATCHERS: dict[str, Callable[[Recording], Patch | None]] = {
    "messages_pass_through": _patch_chunk_processor,
    "messages_bedrock": _patch_sse_wrapper,
    "messages_agentic": _patch_agentic,
    "responses": _patch_responses,
}


def apply(recording: Recording) -> dict[str, Patch | None]:
    """Patch every path this LiteLLM release has; a path maps to None when not recognised."""
    return {path: _PATCHERS[path](recording) for path in PATHS}
