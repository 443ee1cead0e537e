"""The scale benchmark's printed table (plain text) from its JSON results."""

from __future__ import annotations

from typing import Any

from bench.scale_measure import THREAD_SUFFIX


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (also stored in the JSON under `figures`)."""
    rows = r["seed_small"]["rows"]
    w1 = r["backfill_w1"]
    base = r["baseline"]
    job_s = w1["job_seconds"] or w1["wall_seconds"]
    run_small = r["run_small"]["job_seconds"] or r["run_small"]["wall_seconds"]
    run_big = r.get("run_big", {}).get("job_seconds") or r.get("run_big", {}).get("wall_seconds")
    rss = [r[k]["peak_rss_mib"] for k in ("run_small", "run_big", "backfill_w1", "backfill_w2") if k in r]
    explained = r.get("explain_small", []) + r.get("explain_big", [])
    w2 = r.get("backfill_w2")
    w2_s = (w2["job_seconds"] or w2["wall_seconds"]) if w2 and not w2["exit_code"] else None
    dry = r.get("backfill_dry")
    floor = r.get("write_floor")
    spent = r.get("profiled_statement_seconds") or {}
    profiled = r.get("profiled_backfill_seconds")
    return {
        "decide_only_seconds": (dry["job_seconds"] or dry["wall_seconds"]) if dry and not dry["exit_code"] else None,
        "write_floor_update_seconds": floor["update_seconds"] if floor else None,
        "write_floor_audit_seconds": floor["audit_insert_seconds"] if floor else None,
        "audited_write_floor_vs_baseline": (
            _ratio(floor["update_seconds"] + floor["audit_insert_seconds"], base["seconds"]) if floor else None),
        # How far the job is from the cheapest audited write of the same rows (no deciding at all).
        "backfill_vs_audited_write_floor": (
            _ratio(job_s, floor["update_seconds"] + floor["audit_insert_seconds"]) if floor else None),
        "profiled_statement_seconds": spent,
        # (statements of the other threads, behind or ahead of the writes, overlap the rest: they are
        # not subtracted)
        "profiled_outside_statements_seconds": (
            profiled - sum(v for k, v in spent.items() if not k.endswith(tuple(THREAD_SUFFIX.values())))
        ) if profiled and spent else None,
        "backfill_seconds": job_s,
        "backfill_rows_per_second": rows / job_s if job_s else None,
        "backfill_repaired": w1["summary"].get("outcomes", {}).get("repaired"),
        "baseline_seconds": base["seconds"],
        "baseline_rows_per_second": rows / base["seconds"] if base["seconds"] else None,
        "baseline_updated": base["updated"],
        "backfill_vs_baseline": _ratio(job_s, base["seconds"]),
        # The job also repairs rows the baseline's one join cannot reach (request ids that are
        # response ids): seconds per repaired row, job over baseline.
        "backfill_vs_baseline_per_repaired_row": _ratio(
            _ratio(job_s, w1["summary"].get("outcomes", {}).get("repaired")),
            _ratio(base["seconds"], base["updated"])),
        "run_small_seconds": run_small,
        "run_big_seconds": run_big,
        "run_big_vs_small": _ratio(run_big, run_small),
        "peak_rss_mib": max(rss) if rss else None,
        "statements_explained": len(explained),
        "statements_with_seq_scan": sum(1 for e in explained if e["seq_scan"]),
        "backfill_w2_seconds": w2_s,
        "workers_speedup": _ratio(job_s, w2_s),
        # Two processes use the machine's second core, which the baseline's one statement cannot.
        "backfill_w2_vs_baseline": _ratio(w2_s, base["seconds"]),
    }


def render(r: dict[str, Any]) -> str:
    f = figures(r)
    r["figures"] = f
    t = r["targets"]
    s, b = r["seed_small"], r.get("seed_big", {})
    v = r["versions"]
    lines = [
        f"ttft_reconcile scale benchmark: {s['rows']:,} rows (LiteLLM 1.82.3-era schema), {r['cores']} cores,"
        f" PostgreSQL {v['postgresql']}, Python {v['python']}",
        f"seed      N: {s['rows']:,} rows, {s['traces']:,} traces in {s['seed_seconds']} s;"
        f" table+TOAST {s['table_toast_bytes_per_row']:,.0f} B/row",
    ]
    if b:
        lines.append(f"          {b['rows'] // s['rows']}N: {b['rows']:,} rows, {b['traces']:,} traces in"
                     f" {b['seed_seconds']} s; table+TOAST {b['table_toast_bytes_per_row']:,.0f} B/row")
    ratio, run_ratio, rss = f["backfill_vs_baseline"], f["run_big_vs_small"], f["peak_rss_mib"]
    lines += [
        "",
        _row("measure", "value", "target", "verdict"),
        _row("(1) backfill, whole range",
             f"job {f['backfill_seconds']:.1f} s ({_n(f['backfill_rows_per_second'])} rows/s,"
             f" {_n(f['backfill_repaired'])} repaired)"),
        _row("", f"(medians of {len(r.get('backfill_w1_samples') or [0])} alternated rounds: job "
                 + ", ".join(f"{x:.1f}" for x in r.get("backfill_w1_samples") or []) + " s; baseline "
                 + ", ".join(f"{x:.1f}" for x in r.get("baseline_samples") or []) + " s)"),
        _row("    DBA baseline UPDATE",
             f"{f['baseline_seconds']:.1f} s ({_n(f['baseline_rows_per_second'])} rows/s,"
             f" {_n(f['baseline_updated'])} updated)"),
        _row("    ratio job / baseline", _x(ratio), f"<= {t['backfill_vs_baseline']}",
             _verdict(None if ratio is None else ratio <= t["backfill_vs_baseline"])),
        _row("    per repaired row", f"{_x(f['backfill_vs_baseline_per_repaired_row'])} (seconds per row written,"
             " job / baseline)"),
        _row("(2) run, 1 h window, N / 5N",
             f"{_s(f['run_small_seconds'])} s / {_s(f['run_big_seconds'])} s, ratio {_x(run_ratio)}"
             f" (median of {len(r.get('run_small_samples') or [0])})",
             f"<= {t['run_big_vs_small']}",
             _verdict(None if run_ratio is None else run_ratio <= t["run_big_vs_small"])),
        _row("(3) peak RSS of the job", _rss(r), f"<= {t['peak_rss_mib']:.0f} MiB",
             _verdict(None if rss is None else rss <= t["peak_rss_mib"])),
        _row("(4) EXPLAIN, SpendLogs statements",
             f"{f['statements_explained']} distinct, {f['statements_with_seq_scan']} with a Seq Scan on SpendLogs",
             "0 seq scans", _verdict(f["statements_with_seq_scan"] == 0)),
    ]
    if f["decide_only_seconds"] is not None and f["write_floor_update_seconds"] is not None:
        lines += [
            _row("    where the time goes",
                 f"decide only (--dry-run) {f['decide_only_seconds']:.1f} s; the writes alone on the"),
            _row("", f"baseline's rows: UPDATE {f['write_floor_update_seconds']:.1f} s + audit INSERT"
                     f" {f['write_floor_audit_seconds']:.1f} s = {_x(f['audited_write_floor_vs_baseline'])} baseline"),
            _row("    ratio job / audited writes", _x(f["backfill_vs_audited_write_floor"])),
        ]
    if f["profiled_statement_seconds"]:
        spent = ", ".join(f"{kind} {sec:.1f} s" for kind, sec in sorted(
            f["profiled_statement_seconds"].items(), key=lambda item: -item[1]))
        lines.append(_row("    in-process backfill", spent))
        if f["profiled_outside_statements_seconds"] is not None:
            lines.append(_row("", f"commits and Python {f['profiled_outside_statements_seconds']:.1f} s"))
    runs = ("run_small", "run_big", "backfill_w1", "backfill_dry", "backfill_w2")
    failed = [k for k in runs if k in r and r[k]["exit_code"]]
    for key in failed:
        lines.append(_row(f"    FAILED: {key}", f"exit {r[key]['exit_code']}: {r[key]['stderr_tail'].strip()[-150:]}"))
    if f["backfill_w2_seconds"] is not None:
        lines.append(_row("(5) backfill --workers 1 / 2",
                          f"{f['backfill_seconds']:.1f} s / {f['backfill_w2_seconds']:.1f} s,"
                          f" speedup {_x(f['workers_speedup'])}"))
        w2_ratio = f["backfill_w2_vs_baseline"]
        lines.append(_row("    --workers 2 / baseline", _x(w2_ratio), f"<= {t['backfill_vs_baseline']}",
                          _verdict(None if w2_ratio is None else w2_ratio <= t["backfill_vs_baseline"])))
    lines += ["", "statements the job sends to SpendLogs (how each reaches the table):"]
    for e in r.get("explain_small", []) + r.get("explain_big", []):
        head = " ".join(e["statement"].split())[:70]
        lines.append(f"  x{e['executions']:<5} {', '.join(e['spend_logs_scans']) or '-'}  <- {head}...")
    if r.get("profile_top"):
        lines += ["", "profile of an in-process backfill (pyinstrument, top lines):", r["profile_top"]]
    return "\n".join(lines)


def _row(measure: str, value: str, target: str = "", verdict: str = "") -> str:
    return f"{measure:<34}{value:<58}{target:<14}{verdict}".rstrip()


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rss(r: dict[str, Any]) -> str:
    parts = []
    for key, label in (("run_small", "run N"), ("run_big", "run 5N"), ("backfill_w1", "backfill"),
                       ("backfill_w2", "backfill w2")):
        if key in r:
            parts.append(f"{label} {r[key]['peak_rss_mib']:.0f}")
    return ", ".join(parts) + " MiB"
