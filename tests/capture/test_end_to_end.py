"""Capture → SpendLogs row (as LiteLLM builds it) → `ttft-reconcile backfill` → repaired TTFT.

The repaired instant is compared with the mock server's own send time of the first chunk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.capture import helpers
from tests.capture.conftest import SpendProbe, insert_spend_row, naive_utc
from tests.capture.helpers import PATHS, run
from tests.capture.upstreams import MockUpstream

pytestmark = pytest.mark.capture
TOLERANCE_MS = 25.0


@pytest.fixture(scope="module")
def warmed(litellm: Any, upstream: MockUpstream) -> Iterator[None]:
    yield from helpers.warm(litellm, upstream)


def backfill(db_url: str, since: datetime, until: datetime) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "ttft_reconcile", "backfill", "--since", since.isoformat(), "--until",
         until.isoformat(), "--database-url", db_url, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def stored_cst(db_url: str, request_id: str) -> datetime:
    with psycopg.connect(db_url) as conn:
        row = conn.execute('SELECT "completionStartTime" FROM "LiteLLM_SpendLogs" WHERE request_id = %s',
                           (request_id,)).fetchone()
    assert row is not None
    return row[0].replace(tzinfo=timezone.utc)


def round_ms(value: datetime) -> datetime:
    return (value + timedelta(microseconds=500)).replace(microsecond=(value.microsecond + 500) // 1000 * 1000 % 10**6)


@pytest.mark.parametrize("stamp", [False, True], ids=["observe", "stamp"])
def test_backfill_repairs_what_the_capture_saw(
    stamp: bool, litellm: Any, upstream: MockUpstream, warmed: None, any_era_db_url: str, capture_on: Any,
    spend_probe: SpendProbe,
) -> None:
    from ttft_reconcile import capture

    capture_on(any_era_db_url, stamp=stamp)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    served: dict[str, Any] = {}
    for path in PATHS:
        run(helpers.consume(litellm, upstream, path))
        served[path] = upstream.served[-1]
    rows = run(spend_probe.wait(len(PATHS)))
    assert len(rows) == len(PATHS)
    assert capture.flush(10)
    for row in rows:
        insert_spend_row(any_era_db_url, row)
    by_path = dict(zip(PATHS, rows, strict=True))
    broken = {path for path, row in by_path.items()
              if abs((naive_utc(row["endTime"]) - naive_utc(row["completionStartTime"])) / timedelta(milliseconds=1))
              <= 5.0}
    if stamp:
        assert broken == set()  # the capture stamped, or the release did: right when written

    summary = backfill(any_era_db_url, since, datetime.now(timezone.utc) + timedelta(minutes=1))
    assert summary["candidates"] == len(broken)
    assert summary["outcomes"].get("repaired", 0) == len(broken)

    traces = {t["litellm_call_id"]: t for t in helpers.traces(any_era_db_url)}
    for path in sorted(broken):
        row = by_path[path]
        trace = traces[row["_call_id"]]
        new = stored_cst(any_era_db_url, row["request_id"])
        assert new == round_ms(trace["first_chunk_at"])
        step, _ = (helpers.bedrock_first_readable_step(served[path].steps), 0) if path == "bedrock" else (0, 0)
        error_ms = helpers.ms_between(new, helpers.utc(served[path].sent_at[step]))
        print(f"\n{path}: repaired completionStartTime - server first send = {error_ms:.2f} ms")
        assert abs(error_ms) <= TOLERANCE_MS

    again = backfill(any_era_db_url, since, datetime.now(timezone.utc) + timedelta(minutes=1))
    assert again["outcomes"].get("repaired", 0) == 0  # re-running writes nothing
