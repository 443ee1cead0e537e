"""After a job: compute the window's TTFT quantiles and hand everything to metrics.py."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from sqlalchemy import exc as sa_exc

from ttft_reconcile import dashboard, metrics
from ttft_reconcile.db import describe_db_error, make_engine, transaction
from ttft_reconcile.errors import PublishFailed
from ttft_reconcile.metrics import PublishResult, Quantiles
from ttft_reconcile.settings import JobSettings, PublishSettings
from ttft_reconcile.summary import RunSummary

log = logging.getLogger(__name__)


def wants_publishing(settings: PublishSettings) -> bool:
    return bool(settings.pushgateway or settings.metrics_textfile)


def window_quantiles(summary: RunSummary, job: JobSettings) -> Quantiles | None:
    """TTFT quantiles (seconds) per model group over the run's window; None when unavailable."""
    if summary.since is None or summary.until is None or summary.mode == "rollback":
        return None
    engine = make_engine(job.database)
    try:
        with transaction(engine, job.limits) as conn:
            return dashboard.window_quantiles(conn, summary.since, summary.until)
    except sa_exc.SQLAlchemyError as error:
        log.warning("TTFT quantiles not published: %s", describe_db_error(error, job.database))
        return None
    finally:
        engine.dispose()


def publish_run(summary: RunSummary, job: JobSettings, settings: PublishSettings) -> PublishResult:
    """Publish a finished run. Raises PublishFailed (exit 3): the corrections are already committed."""
    if summary.dry_run or not wants_publishing(settings):
        return metrics.publish_success(summary, settings)
    return metrics.publish_success(summary, settings, quantiles=window_quantiles(summary, job))


def publish_failed_run(mode: str, job: JobSettings, settings: PublishSettings) -> str | None:
    """POST the failure gauges. Returns why they could not be published (the caller adds it to
    the job's own error line, which wins), or None."""
    try:
        metrics.publish_failure(mode, settings, now=datetime.now(timezone.utc), worker=job.worker,
                                dry_run=job.dry_run)
    except PublishFailed as error:
        return f"failure metrics not published either: {error}"
    return None
