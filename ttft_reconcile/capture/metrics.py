"""The capture's Prometheus series, in the process's default registry (the proxy's /metrics).

Created once per process, on first use; re-importing the module reuses them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge

DROP_REASONS = (
    "queue_full",  # the writer's bounded queue was full
    "db_error",  # the insert failed (database down, timeout, ...)
    "no_database",  # no database URL was configured
    "no_schema",  # `ttft-reconcile migrate` has not run on that database
    "schema_mismatch",  # stream_traces lacks a column the capture writes
    "recorder_error",  # a bug while recording or classifying (the stream itself was untouched)
    "no_call_id",  # LiteLLM's logging object had no litellm_call_id
    "shutdown",  # still queued when the process exited and flush timed out
)


@dataclass(frozen=True)
class CaptureMetrics:
    written: Counter
    dropped: Counter
    hooks_active: Gauge


_lock = threading.Lock()
_metrics: CaptureMetrics | None = None


def get() -> CaptureMetrics:
    """The process-wide collectors (registered in prometheus_client's default REGISTRY)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = CaptureMetrics(
                written=Counter("ttft_capture_traces_written", "Stream traces inserted into ttft_reconcile."),
                dropped=Counter("ttft_capture_traces_dropped", "Stream traces not persisted, by reason.",
                                ["reason"]),
                hooks_active=Gauge("ttft_capture_hooks_active",
                                   "1 per LiteLLM streaming path the capture patched; 0 if not recognised.",
                                   ["path"]),
            )
            for reason in DROP_REASONS:
                _metrics.dropped.labels(reason=reason)
        return _metrics


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one capture series (0.0 when absent); for tests and the benchmark."""
    get()
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)
