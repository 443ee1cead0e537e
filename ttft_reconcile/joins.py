"""How a SpendLogs row finds its stream traces: the three join strategies and their time window.

Shared by the batch statement (batch_sql.py), its readable reference (classify.py) and `explain`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

# Evidence labels of the strategies, in the job's order.
JOIN_REQUEST_ID: Final = "request_id=litellm_call_id"
JOIN_CALL_ID_COLUMN: Final = "litellm_call_id column"
JOIN_RESPONSE_ID: Final = "request_id=response_id"

# A trace belongs to a row only if its request_start_at lies within TRACE_JOIN_SLACK of the
# row's "startTime" (UTC): both are LiteLLM's logging start time, so they agree to milliseconds
# unless a clock or timezone is wrong; the margin keeps such an error visible as
# `out_of_bounds` instead of `no_trace`, and ids are not reused within days.
TRACE_JOIN_SLACK: Final = timedelta(days=1)
# The same as a Postgres interval literal, for the SQL that applies it.
TRACE_JOIN_SLACK_SQL: Final = f"{int(TRACE_JOIN_SLACK.total_seconds())} seconds"
