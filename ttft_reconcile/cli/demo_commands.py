"""`ttft-reconcile demo`: try the whole thing locally, no Postgres or LiteLLM needed."""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING, Any

import click

from ttft_reconcile.cli.options import output_options
from ttft_reconcile.cli.runner import echo_json, execute
from ttft_reconcile.errors import UsageError
from ttft_reconcile.outcomes import OUTCOMES
from ttft_reconcile.policies import DEFAULT_POLICY, POLICIES

if TYPE_CHECKING:  # the demo pulls in pandas and numpy: imported only when it runs
    from ttft_reconcile import demo

OUTCOME_HELP = {
    "repaired": "fallback value replaced by the stream's first-token instant (audited, reversible)",
    "confirmed": "the stored value already agrees with the stream",
    "no_trace": "no stream trace: written before the capture ran, or not a stream; left alone",
    "not_streaming": "positively not a stream (chatcmpl- id, Bedrock /invoke, Vertex :rawPredict)",
    "no_first_token": "the stream never produced the policy's event",
    "out_of_bounds": "the trace's instant lies outside [startTime, endTime]: clock trouble",
    "ambiguous": "two join strategies point at different calls; left alone",
    "changed": "the row changed between read and write; left alone",
}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_report(report: demo.DemoReport) -> str:
    """The human-readable demo output (plain text, no colours)."""
    s = report.summary
    lines = [
        f"LiteLLM {'1.82.3' if report.era == 'old' else '1.105+'}-era SpendLogs: {report.synth.rows:,} requests"
        f" on {report.since:%Y-%m-%d} (UTC), {report.synth.traces:,} stream traces",
        f"backfill {report.since:%Y-%m-%dT%H:%MZ} .. {report.until:%Y-%m-%dT%H:%MZ}, policy {s.policy}:"
        f" run {s.run_id}, {s.candidates:,} candidate rows in {s.duration_seconds:.1f} s",
        "",
        "What it found (one outcome per candidate row):",
    ]
    for name in OUTCOMES:
        lines.append(f"  {name:<15}{s.outcomes.get(name, 0):>8,}  {OUTCOME_HELP[name]}")
    verdict = "yes, row by row" if report.agrees else "NO (see --json: expected_outcomes)"
    lines += [f"  matches the generator's ground truth: {verdict}", ""]
    lines.append("TTFT per model group, ms from startTime (before: as LiteLLM stored it;"
                 " after: rows with a real first token)")
    lines.append(f"  {'model group':<22}{'rows':>7}{'before p50':>12}{'p90':>9}{'after p50':>12}{'p90':>9}"
                 f"{'rows':>7}")
    for g in report.ttft:
        lines.append(f"  {g.model_group:<22}{g.rows_before:>7,}{_ms(g.before_p50):>12}{_ms(g.before_p90):>9}"
                     f"{_ms(g.after_p50):>12}{_ms(g.after_p90):>9}{g.rows_after:>7,}")
    if report.era == "old":
        lines.append("  (1.82.3 sets startTime after the upstream headers on native /v1/messages streams;")
        lines.append("   each correction's evidence also holds the TTFT from the proxy's request start)")
    lines += ["", "Examples of repaired rows (completionStartTime before -> after):"]
    for e in report.examples:
        lines.append(f"  {e['request_id']}  {e['call_type']}/{e['provider']}  {e['model_group']}")
        lines.append(f"      startTime {e['start_time']}  {e['old'] or 'NULL'} -> {e['new']}"
                     f"  TTFT {_ms(e['ttft_ms_before'])} -> {_ms(e['ttft_ms'])} ms")
        lines.append(f"      from the proxy's request start: {_ms(e['ttft_ms_from_request_start'])} ms;"
                     f" joined by {', '.join(e['join'])}")
    if report.kept:
        lines += ["", f"The server is still running: {report.url}",
                  f"Point the other commands at it: export TTFT_RECONCILE_DATABASE_URL='{report.url}'",
                  f"Stop and delete it with: {_program()} demo --stop {report.data_dir}"]
    return "\n".join(lines)


def _program() -> str:
    """How to call this program again: by name when it is on PATH, else by the path it was run as
    (e.g. `.venv/bin/ttft-reconcile` from a virtualenv that is not activated)."""
    invoked = sys.argv[0] if sys.argv and os.path.basename(sys.argv[0]) == "ttft-reconcile" else ""
    if not invoked or shutil.which("ttft-reconcile") == os.path.abspath(invoked):
        return "ttft-reconcile"
    return invoked


@click.command("demo")
@click.option("--rows", type=click.IntRange(1000, 5_000_000), default=20_000, show_default=True,
              help="SpendLogs rows to generate (one UTC day: yesterday).")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the generator (same seed, same data).")
@click.option("--era", type=click.Choice(["old", "new"]), default="old", show_default=True,
              help="old: rows as LiteLLM 1.82.3 writes them (request_id = call id, late startTime);"
                   " new: as 1.105+ writes them (provider ids, litellm_call_id column).")
@click.option("--policy", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
              help="Which instant counts as the first token.")
@click.option("--keep", is_flag=True, help="Leave the server running and print its URL.")
@click.option("--stop", "stop_dir", metavar="DIR", help="Stop and delete a server left by --keep, then exit.")
@output_options
def demo_command(rows: int, seed: int, era: str, policy: str, keep: bool, stop_dir: str | None,
                 **kwargs: Any) -> None:
    """Try it locally: an embedded Postgres, LiteLLM's real schema, a day of synthetic traffic,
    the real backfill, and what it found and fixed. Needs no database and no LiteLLM.

    \b
    ttft-reconcile demo                  # about 20 s; everything is deleted afterwards
    ttft-reconcile demo --keep           # leave the server running to explore it with psql
    ttft-reconcile demo --json --rows 50000 --era new
    """

    def action() -> None:
        from ttft_reconcile import demo

        if stop_dir:
            try:
                demo.stop_kept(stop_dir)
            except ValueError as error:
                raise UsageError(str(error)) from None
            click.echo(f"stopped and deleted {stop_dir}")
            return
        phase = None if kwargs["as_json"] else (lambda message: click.echo(f"demo: {message} ...", err=True))
        report = demo.run_demo(demo.DemoOptions(rows=rows, seed=seed, era=era, policy=policy, keep=keep),
                               phase=phase)
        if kwargs["as_json"]:
            echo_json(report.to_json())
        else:
            click.echo(format_report(report))

    execute(kwargs, action)


def register(group: click.Group) -> None:
    group.add_command(demo_command)
