"""The capture: records chunk timings of LiteLLM's streams inside the proxy process.

    from ttft_reconcile.capture import install
    install()                      # URL from TTFT_CAPTURE_DATABASE_URL, then DATABASE_URL
    install(stamp=True)            # also stamp completion_start_time at the first chunk

`install`, `uninstall` and `flush` are idempotent. No pandas or SQLAlchemy here: this runs
in the proxy. The writer thread and its connection are per process, started lazily after a
fork (checked by pid); the queue is flushed at interpreter exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import FrameType
from typing import Any

from ttft_reconcile.capture import hooks, metrics
from ttft_reconcile.capture.recorder import StreamRecorder, context_from_logging
from ttft_reconcile.capture.sink import RateLimitedWarning, SinkOptions, TraceSink
from ttft_reconcile.capture.timeline import DEFAULT_MAX_OFFSETS
from ttft_reconcile.dburl import DatabaseUrl, DatabaseUrlError, parse_database_url

__all__ = ["install", "uninstall", "flush", "installed_paths", "options_from_env", "CaptureOptions"]

log = logging.getLogger(__name__)
URL_ENV = ("TTFT_CAPTURE_DATABASE_URL", "DATABASE_URL")
EXIT_FLUSH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CaptureOptions:
    """stamp: opt-in first-chunk stamp; max_offsets: evidence cap per stream (entries);
    queue_size: traces waiting for the writer; flush_interval: seconds between writes."""

    stamp: bool = False
    max_offsets: int = DEFAULT_MAX_OFFSETS
    queue_size: int = 10_000
    flush_interval: float = 1.0
    batch_size: int = 500


@dataclass
class _Capture:
    """The running capture of this process (implements hooks.Recording)."""

    url: DatabaseUrl | None
    options: CaptureOptions
    litellm_version: str | None
    warn: RateLimitedWarning = field(default_factory=RateLimitedWarning)
    pid: int = field(default_factory=os.getpid)
    sink: TraceSink | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _sink(self) -> TraceSink:
        sink = self.sink
        if sink is None or self.pid != os.getpid():
            with self.lock:
                if self.sink is None or self.pid != os.getpid():
                    self.pid = os.getpid()  # a forked worker gets its own thread and connection
                    self.sink = TraceSink(self.url, SinkOptions(self.options.queue_size, self.options.flush_interval,
                                                                self.options.batch_size), self.warn)
                sink = self.sink
        return sink

    def open(self, logging_obj: Any, route: str | None, litellm_stamps: bool) -> StreamRecorder | None:
        if logging_obj is None:
            return None
        context = context_from_logging(logging_obj, route, self.litellm_version)
        return StreamRecorder(context, max_offsets=self.options.max_offsets)

    def first_chunk(self, recorder: StreamRecorder, logging_obj: Any, litellm_stamps: bool) -> None:
        if litellm_stamps or getattr(logging_obj, "completion_start_time", None) is not None:
            recorder.stamped_by = "litellm"
        elif self.options.stamp:
            setter = getattr(logging_obj, "update_completion_start_time", None) or getattr(
                logging_obj, "_update_completion_start_time", None)
            if setter is not None:
                setter(completion_start_time=recorder.first_wall)
                recorder.stamped_by = "capture"

    def finish(self, recorder: StreamRecorder, outcome: str, exposed_id: str | None = None) -> None:
        recorder.finish(outcome)
        recorder.exposed_id = exposed_id
        self._sink().submit(recorder)

    def failed(self) -> None:
        metrics.get().dropped.labels(reason="recorder_error").inc()
        self.warn("recorder_error", "ttft capture: recording a stream failed; the stream was not affected")


_state_lock = threading.Lock()
_capture: _Capture | None = None
_patches: dict[str, hooks.Patch | None] = {}
_exit_hooks_installed = False


def _resolve_url(database_url: str | None) -> DatabaseUrl | None:
    raw = database_url
    for name in URL_ENV:
        raw = raw or os.environ.get(name)
    if not raw:
        log.warning("ttft capture: no database URL (%s); traces will be dropped", " / ".join(URL_ENV))
        return None
    try:
        return parse_database_url(raw)
    except DatabaseUrlError as error:
        log.warning("ttft capture: unusable database URL: %s; traces will be dropped", error)
        return None


def _litellm_version() -> str | None:
    try:
        return metadata.version("litellm")
    except metadata.PackageNotFoundError:
        return None


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


def install(database_url: str | None = None, **options: Any) -> list[str]:
    """Patch LiteLLM's streaming paths; returns the names of the patched paths.

    Options: stamp (bool, default False), max_offsets (64), queue_size (10000),
    flush_interval (seconds, 1.0), batch_size (500). A second call changes nothing and
    returns the same list.
    """
    global _capture
    with _state_lock:
        if _capture is not None:
            return installed_paths()
        capture = _Capture(_resolve_url(database_url), CaptureOptions(**options), _litellm_version())
        patches = hooks.apply(capture)
        gauge = metrics.get().hooks_active
        for path, patch in patches.items():
            gauge.labels(path=path).set(1 if patch is not None else 0)
        missing = [p for p, patch in patches.items() if patch is None and p not in hooks.OPTIONAL_PATHS]
        if missing:
            log.warning("ttft capture: LiteLLM %s layout not recognised for %s; those streams are not traced",
                        capture.litellm_version or "(not installed)", ", ".join(missing))
        _patches.clear()
        _patches.update(patches)
        _capture = capture
        _install_exit_hooks()
        return installed_paths()


def installed_paths() -> list[str]:
    """Names of the currently patched paths."""
    return [path for path, patch in _patches.items() if patch is not None]


def uninstall(timeout: float = EXIT_FLUSH_TIMEOUT_S) -> None:
    """Restore LiteLLM's original functions, flush and stop the writer."""
    global _capture
    with _state_lock:
        for patch in _patches.values():
            if patch is not None:
                patch.undo()
        gauge = metrics.get().hooks_active
        for path in _patches:
            gauge.labels(path=path).set(0)
        _patches.clear()
        capture, _capture = _capture, None
    if capture is not None and capture.sink is not None and capture.pid == os.getpid():
        if not capture.sink.stop(timeout):
            capture.sink.drop("shutdown", capture.sink.pending())


def flush(timeout: float = EXIT_FLUSH_TIMEOUT_S) -> bool:
    """Write everything recorded so far; False if `timeout` (seconds) passed first."""
    capture = _capture
    if capture is None or capture.sink is None or capture.pid != os.getpid():
        return True
    return capture.sink.flush(timeout)


def _at_exit() -> None:
    capture = _capture
    if capture is not None and capture.sink is not None and capture.pid == os.getpid():
        if not capture.sink.stop(EXIT_FLUSH_TIMEOUT_S):
            capture.sink.drop("shutdown", capture.sink.pending())


def _hurry() -> None:
    capture = _capture
    if capture is not None and capture.sink is not None and capture.pid == os.getpid():
        capture.sink.hurry()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Nobody else handles SIGTERM: flush, then die of the signal as the default would."""
    _at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _chain_sigterm(previous: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
    """A server's own SIGTERM handler (uvicorn's drains requests, then re-raises the signal, which
    skips atexit): switch the writer to write-at-once, then let the server do its shutdown."""

    def handler(signum: int, frame: FrameType | None) -> Any:
        _hurry()
        return previous(signum, frame)

    return handler


def _install_exit_hooks() -> None:
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(_at_exit)
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
        elif callable(current):
            signal.signal(signal.SIGTERM, _chain_sigterm(current))
    except (ValueError, OSError):
        log.debug("ttft capture: cannot install a SIGTERM handler here")
