"""The instance a LiteLLM proxy config names; importing this module installs the capture.

    litellm_settings:
      callbacks: ["ttft_reconcile.capture.callback.capture"]   # LiteLLM >= 1.110 (installed module)
      callbacks: ["ttft_capture.capture"]   # older: a file beside config.yaml, see `ttft-reconcile capture-callback`

Options come from the environment: TTFT_CAPTURE_STAMP (true/false), TTFT_CAPTURE_MAX_OFFSETS,
TTFT_CAPTURE_QUEUE_SIZE, TTFT_CAPTURE_FLUSH_INTERVAL (seconds); the database URL from
TTFT_CAPTURE_DATABASE_URL, then DATABASE_URL.
"""

from __future__ import annotations

from typing import Any

from ttft_reconcile.capture import install, options_from_env

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError:  # pragma: no cover - only inside a LiteLLM process is this module useful
    CustomLogger = object


class TtftCapture(CustomLogger):  # type: ignore[misc,valid-type]
    """Loads the capture; it has no per-request work (the patched iterators do the recording)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = install(**options_from_env())


capture = TtftCapture()
