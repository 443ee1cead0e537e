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
# row's "startTime" (UTC). Both are LiteLLM's logging start time, so they agree to milliseconds;
# LiteLLM <= 1.108 stamps "startTime" of a native /v1/messages stream when the upstream's headers
# arrive (seconds later, minutes at worst with retries), Bedrock when the client starts reading.
# An hour covers those, and ids are not reused within it. It also bounds the traces a batch
# reads: those of its own time span, an hour either side.
TRACE_JOIN_SLACK: Final = timedelta(hours=1)
# The same in words, for messages.
TRACE_JOIN_SLACK_WORDS: Final = "an hour"
# The same as a Postgres interval literal, for the SQL that applies it.
TRACE_JOIN_SLACK_SQL: Final = f"{int(TRACE_JOIN_SLACK.total_seconds())} seconds"
