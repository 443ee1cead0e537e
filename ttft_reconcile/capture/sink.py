"""The bounded background writer: one owned thread per process, batches, drop-and-count.

`submit` never blocks the event loop: a full queue drops the trace and counts it. The
thread turns finished recorders into rows (parsing happens here, not on the loop), opens
its psycopg connection lazily, checks the schema once per connection, and inserts in
batches. Failures are counted and warned about at most once a minute.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import psycopg

from ttft_reconcile.capture import metrics
from ttft_reconcile.capture.recorder import StreamRecorder, build_row
from ttft_reconcile.capture.writer import TraceRow, insert_traces, schema_problem
from ttft_reconcile.dburl import DatabaseUrl, scrub

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0
RECONNECT_AFTER_S = 5.0


@dataclass(frozen=True)
class SinkOptions:
    """queue_size in traces, flush_interval in seconds, batch_size in rows."""

    queue_size: int = 10_000
    flush_interval: float = 1.0
    batch_size: int = 500
    connect_timeout: int = 5


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop(_Flush):
    pass


class RateLimitedWarning:
    """Logs a WARNING at most once per `every` seconds per key."""

    def __init__(self, every: float = WARN_EVERY_S) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every:
                return
            self._last[key] = now
        log.warning(message, *args)


class TraceSink:
    """Owns the writer thread and its connection; `submit` is safe from the event loop."""

    def __init__(self, url: DatabaseUrl | None, options: SinkOptions, warn: RateLimitedWarning) -> None:
        self.url = url
        self.options = options
        self.warn = warn
        self._queue: queue.Queue[StreamRecorder | _Flush] = queue.Queue(maxsize=options.queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._blocked: tuple[str, str] | None = None  # schema problem of the current connection
        self._next_connect = 0.0
        self._metrics = metrics.get()
        self.urgent = False  # shutting down: write each trace as soon as it arrives

    # --- event-loop side -------------------------------------------------------------
    def submit(self, recorder: StreamRecorder) -> None:
        """Queue a finished stream; drop and count if the queue is full."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(recorder)
        except queue.Full:
            self.drop("queue_full")
            self.warn("queue_full", "ttft capture: trace queue full (%d); dropping traces",
                      self.options.queue_size)

    def drop(self, reason: str, count: int = 1) -> None:
        self._metrics.dropped.labels(reason=reason).inc(count)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted before this call is written or dropped."""
        return self._signal(_Flush(), timeout)

    def stop(self, timeout: float) -> bool:
        """Flush, then end the thread and close the connection."""
        if self._thread is None:
            return True
        done = self._signal(_Stop(), timeout)
        if done:
            self._thread.join(timeout)
            self._thread = None
        return done

    def pending(self) -> int:
        return self._queue.qsize()

    def hurry(self) -> None:
        """From now on write every trace at once (the process is about to exit); never blocks."""
        self.urgent = True
        if self._thread is not None:
            try:
                self._queue.put_nowait(_Flush())
            except queue.Full:
                pass

    def _signal(self, marker: _Flush, timeout: float) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="ttft-capture-writer", daemon=True)
                thread.start()
                self._thread = thread

    # --- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        batch: list[TraceRow] = []
        deadline = time.monotonic() + self.options.flush_interval
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if isinstance(item, StreamRecorder):
                row = self._row(item)
                time.sleep(0)  # hand the GIL back to the event loop between streams
                if row is not None:
                    batch.append(row)
                if len(batch) < self.options.batch_size and not (self.urgent and self._queue.empty()):
                    continue
            if batch:
                self._write(batch)
                batch = []
            deadline = time.monotonic() + self.options.flush_interval
            if isinstance(item, _Flush):
                if isinstance(item, _Stop):
                    self._close()
                    item.done.set()
                    return
                item.done.set()

    def _row(self, recorder: StreamRecorder) -> TraceRow | None:
        if not recorder.context.litellm_call_id:
            self.drop("no_call_id")
            return None
        try:
            return build_row(recorder)
        except Exception:  # a parser bug must never cost more than this one trace
            self.drop("recorder_error")
            log.exception("ttft capture: could not build a trace row")
            return None

    def _write(self, batch: list[TraceRow]) -> None:
        if self.url is None:
            self.drop("no_database", len(batch))
            self.warn("no_database", "ttft capture: no database URL (TTFT_CAPTURE_DATABASE_URL or "
                      "DATABASE_URL); dropping traces")
            return
        conn = self._connection()
        if conn is None:
            return self._drop_batch("db_error", len(batch))
        if self._blocked is not None:
            reason, message = self._blocked
            self.drop(reason, len(batch))
            self.warn(reason, "ttft capture: %s; dropping traces", message)
            if time.monotonic() >= self._next_connect:
                self._close()  # the next batch reconnects and checks the schema again
            return
        try:
            written = insert_traces(conn, batch)
        except psycopg.Error as error:
            self._drop_batch("db_error", len(batch), error)
            self._close()
            return
        self._metrics.written.inc(written)

    def _drop_batch(self, reason: str, count: int, error: BaseException | None = None) -> None:
        self.drop(reason, count)
        if error is not None:
            self.warn(reason, "ttft capture: writing %d traces failed: %s", count, self._scrub(error))

    def _scrub(self, error: BaseException) -> str:
        # one log line: libpq's messages run over several ("...\n\tThis probably means...")
        return " ".join(scrub(str(error)).split())

    def _connection(self) -> psycopg.Connection[tuple[object, ...]] | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._next_connect or self.url is None:
            return None
        self._next_connect = time.monotonic() + RECONNECT_AFTER_S
        conn = None
        try:
            conn = psycopg.connect(
                self.url.libpq,
                autocommit=True,
                connect_timeout=self.options.connect_timeout,
                application_name="ttft_reconcile.capture",
                prepare_threshold=None if self.url.pgbouncer else 5,
            )
            self._blocked = schema_problem(conn)
        except psycopg.Error as error:
            if conn is not None:
                conn.close()
            self.warn("db_error", "ttft capture: cannot connect to %s: %s", self.url.redacted,
                      self._scrub(error))
            return None
        if self._blocked is not None:
            self._next_connect = time.monotonic() + WARN_EVERY_S
        self._conn = conn
        return conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("ttft capture: closing the connection failed", exc_info=True)

