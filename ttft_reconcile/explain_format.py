"""Render an Explanation as text, one fact per line (instants as stored: SpendLogs naive UTC)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ttft_reconcile.explain import Explanation


def as_text(explanation: Explanation) -> str:
    """A human-readable account, one fact per line."""
    lines = [f"request {explanation.request_id}: {explanation.verdict}", f"  {explanation.reason}"]
    row = explanation.row
    if row is not None:
        ttft = "NULL" if row.ttft_ms is None else f"{row.ttft_ms:.0f} ms"
        lines += [
            "SpendLogs row (naive UTC):",
            f"  call_type={row.call_type} model_group={row.model_group} provider={row.provider}",
            f"  startTime={row.start_time} endTime={row.end_time}",
            f"  completionStartTime={row.completion_start_time} (TTFT {ttft})",
            f"  api_base={row.api_base} litellm_call_id={row.litellm_call_id}",
        ]
    if explanation.joins:
        lines.append("joins:")
    for join in explanation.joins:
        found = ", ".join(f"{t.litellm_call_id}#{t.stream_seq}" for t in join.traces) or "no trace"
        note = f" ({join.note})" if join.note else ""
        lines.append(f"  {join.strategy} [{join.key}]: {found}{note}")
    chosen = explanation.chosen
    if chosen is not None:
        lines.append(f"trace {chosen.litellm_call_id}#{chosen.stream_seq}: outcome={chosen.outcome} "
                     f"chunks={chosen.chunk_count} events={chosen.event_count} litellm={chosen.litellm_version}")
        for policy, at in chosen.instants.items():
            ms = explanation.instants_ms.get(policy)
            shown = "-" if at is None else f"{at.isoformat()} ({ms:.0f} ms after startTime)"
            lines.append(f"  {policy:<13} {shown}")
    for c in explanation.corrections:
        reverted = f", reverted by run {c.reverted_by_run}" if c.reverted_by_run else ""
        lines.append(f"correction {c.id}: run {c.run_id} ({c.run_mode}) {c.policy} "
                     f"{c.old_completion_start_time} -> {c.new_completion_start_time} "
                     f"TTFT {c.ttft_ms:.0f} ms [{c.status}{reverted}]")
    return "\n".join(lines) + "\n"
