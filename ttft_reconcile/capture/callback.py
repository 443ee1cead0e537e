"""The instance a LiteLLM proxy config names; importing this module installs the capture.

    litellm_settings:
      callbacks: ["ttft_reconcile.capture.callback.capture"]   # LiteLLM >= 1.110 (installed module)
      callbacks: ["ttft_capture.capture"]   # older: a file beside config.yaml, see `ttft-reconcile capture-callback`

Options come from the environment: TTFT_CAPTURE_STAMP (true/false), TTFT_CAPTURE_MAX_OFFSETS,
TTFT_CAPTURE_QUEUE_SIZE, TTFT_CAPTURE_FLUSH_INTERVAL (seconds); the database URL from
TTFT_CAPTURE_DATABASE_URL, then DATABASE_URL.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ttft_reconcile.capture import install

log = logging.getLogger(__name__)

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError:  # pragma: no cover - only inside a LiteLLM process is this module useful
    CustomLogger = object

_TRUE = {"1", "true", "yes", "on"}


def options_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """install() options from TTFT_CAPTURE_* variables; bad values are warned about and ignored."""
    source = os.environ if env is None else env
    options: dict[str, Any] = {}
    if "TTFT_CAPTURE_STAMP" in source:
        options["stamp"] = source["TTFT_CAPTURE_STAMP"].strip().lower() in _TRUE
    for name, key, kind in (("TTFT_CAPTURE_MAX_OFFSETS", "max_offsets", int),
                            ("TTFT_CAPTURE_QUEUE_SIZE", "queue_size", int),
                            ("TTFT_CAPTURE_FLUSH_INTERVAL", "flush_interval", float)):
        if name in source:
            try:
                value = kind(source[name])
            except ValueError:
                log.warning("ttft capture: ignoring %s=%r (not a number)", name, source[name])
                continue
            if value > 0:
                options[key] = value
    return options


class TtftCapture(CustomLogger):  # type: ignore[misc,valid-type]
    """Loads the capture; it has no per-request work (the patched iterators do the recording)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = install(**options_from_env())


capture = TtftCapture()
