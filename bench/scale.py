"""Issue 5's scale benchmark, one command:

    python -m bench.scale                      # 1 M rows (and a 5 M-row table for `run`)
    python -m bench.scale --rows 5000000
    python -m bench.scale --database-url postgresql://postgres@127.0.0.1:5432/postgres

Seeds LiteLLM's 1.82.3-era schema (litellm-proxy-extras 0.4.56: request ids are call ids) with
COPY, then measures on the same data: (1) `backfill` over the whole range against the
one-statement DBA baseline, (2) `run` with a one-hour window on the N-row table and on a table
five times as long, (3) the job's peak RSS, (4) EXPLAIN of every statement the job sends to
SpendLogs, (5) `backfill --workers 1` against `--workers 2`. Rows are restored between
measurements. Prints a table and writes every figure to a JSON file. Without --database-url it
starts an embedded Postgres in a throwaway directory and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from bench import scale_data as data
from bench import scale_measure as measure
from bench.scale_report import figures, render
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.demo import EmbeddedServer, demo_parent
from ttft_reconcile.settings import JobSettings

TARGETS = {"backfill_vs_baseline": 1.5, "run_big_vs_small": 1.2, "peak_rss_mib": 300.0}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the main table (default 1,000,000)")
    p.add_argument("--big-factor", type=int, default=5, help="the `run` comparison table is this many times larger")
    p.add_argument("--metadata-bytes", type=int, default=2600, help="metadata JSON per row, main table")
    p.add_argument("--big-metadata-bytes", type=int, default=2600,
                   help="metadata JSON per row, large table (default: as the main table's, so both have the same"
                        " heap rows; below about 2,000 rows stay inline, three times as wide, and `run` then"
                        " measures row width, not table size)")
    p.add_argument("--broken-share", type=float, default=0.10, help="broken streaming rows with traces")
    p.add_argument("--untraced-share", type=float, default=0.03, help="broken streaming rows without traces")
    p.add_argument("--rows-per-day", type=float, default=185_000, help="traffic rate (both tables)")
    p.add_argument("--rounds", type=int, default=3,
                   help="the baseline and the backfill are each timed this many times, alternated (default 3)")
    p.add_argument("--run-samples", type=int, default=5,
                   help="`run` is timed this many times per table (restored between), median kept (default 5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database-url", help="a superuser URL; scratch databases are created and dropped there")
    p.add_argument("--out", default="bench-scale.json", help="where the JSON goes (default bench-scale.json)")
    p.add_argument("--no-profile", action="store_true", help="skip the pyinstrument profile of a backfill")
    p.add_argument("--no-workers", action="store_true", help="skip --workers 1 vs 2")
    p.add_argument("--keep", action="store_true", help="keep the scratch databases (external server only)")
    p.add_argument("--force", action="store_true", help="start even if the free disk looks too small")
    return p.parse_args(argv)


def _versions(url: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("ttft-reconcile", "sqlalchemy", "psycopg", "pandas", "numpy", "alembic"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        found["postgresql"] = str(row[0]) if row else "?"
    found["litellm-proxy-extras (schema)"] = data.OLD_EXTRAS
    return found


def _check_disk(args: argparse.Namespace, where: Path | None) -> dict[str, Any]:
    need = data.disk_estimate(args.rows, args.metadata_bytes, args.rows * args.big_factor,
                              args.big_metadata_bytes, args.broken_share * 1.1)
    info: dict[str, Any] = {"estimated_bytes": need}
    line = f"bench: needs about {need / 1024**3:.1f} GiB of disk for the database"
    if where is not None:
        free = shutil.disk_usage(where).free
        info["free_bytes"] = free
        line += f"; {free / 1024**3:.1f} GiB free where it will live"
        if free < need and not args.force:
            print(line, file=sys.stderr)
            raise SystemExit("bench: not enough free disk (use --force to try anyway, or fewer --rows)")
    print(line, file=sys.stderr)
    return info


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _measure_main(url: str, seeded: data.Seeded, args: argparse.Namespace, out: dict[str, Any]) -> None:
    window = ["--since", seeded.since.isoformat(), "--until", seeded.until.isoformat()]
    settings = JobSettings(database=parse_database_url(url))
    _say("EXPLAIN capture: an in-process `run` (1 h)")
    with measure.capture_spend_logs_statements() as captured:
        _run_last_hour_in_process(url, seeded.until)
    data.restore(url)
    _say("(2) `run`, one-hour window, N-row table")
    out["run_small"], out["run_small_samples"] = _median_run(url, seeded.until, args.run_samples)
    _say(f"(1)/(5) the DBA baseline UPDATE and `backfill --workers 1`, alternated {args.rounds} times")
    _baseline_and_backfill(url, window, args.rounds, out)
    _say("(1) where the time goes: `backfill --dry-run` (decide only), then the writes alone")
    out["backfill_dry"] = asdict(measure.run_cli(["backfill", *window, "--workers", "1", "--dry-run"], url))
    out["write_floor"] = asdict(measure.write_floor(url))
    data.restore(url)
    if not args.no_workers:
        _say("(5) `backfill --workers 2`")
        out["backfill_w2"] = asdict(measure.run_cli(["backfill", *window, "--workers", "2"], url))
        data.restore(url)
    _say("EXPLAIN capture + profile: an in-process backfill, then its rollback")

    def backfill() -> Any:
        return job.backfill(settings, seeded.since, seeded.until)

    with measure.capture_spend_logs_statements() as more:
        with measure.time_statements() as times:
            if args.no_profile:
                summary, top = backfill(), ""
            else:
                summary, top = measure.profile(backfill)
        job.rollback(settings, run_id=summary.run_id)
    out["profiled_statement_seconds"] = times.seconds
    out["profiled_statement_counts"] = times.counts
    captured.statements.update(more.statements)
    for statement, count in more.counts.items():
        captured.counts[statement] = captured.counts.get(statement, 0) + count
    out["profile_top"] = top
    out["profiled_backfill_seconds"] = summary.duration_seconds
    data.restore(url)
    # one whole day inside the range (the backfill rebuilds every day's rollup)
    whole_day = (seeded.since + timedelta(days=1)).date()
    explained = [*measure.explain(url, captured), measure.explain_rollup(url, whole_day)]
    out["explain_small"] = [asdict(e) for e in explained]


def _run_last_hour_args(until: datetime) -> list[str]:
    """`run` arguments whose window is the data's last hour, [until - 1 h, until), whenever it starts."""
    settle = max(0, int((datetime.now(timezone.utc) - until).total_seconds()))
    return ["run", "--initial-window", f"{settle + 3600}s", "--settle", f"{settle}s"]


def _run_last_hour_in_process(url: str, until: datetime) -> None:
    settings = JobSettings(database=parse_database_url(url), initial_window=timedelta(hours=1),
                           settle=timedelta(0))
    job.run_incremental(settings, now=until)


def _median_run(url: str, until: datetime, samples: int) -> tuple[dict[str, Any], list[float]]:
    """`run` over the last hour `samples` times, its rows put back after each (without the full
    VACUUM of `restore`, and through the index: a cron `run` meets a table whose recent pages are
    cached): the median
    run (by the job's own seconds) and every sample's seconds. One sub-second run is mostly noise."""
    runs = []
    for _ in range(max(1, samples)):
        runs.append(measure.run_cli(_run_last_hour_args(until), url))
        # only the window's rows changed: put back just those (a restore of the whole table read
        # all of it, evicting the recent pages of the large table only, so its samples ran cold)
        data.restore(url, settle_after=False, since=until - timedelta(hours=2))
    data.restore(url)
    seconds = [run.job_seconds if run.job_seconds is not None else run.wall_seconds for run in runs]
    ranked = sorted(range(len(runs)), key=lambda i: seconds[i])
    return asdict(runs[ranked[len(ranked) // 2]]), seconds


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _baseline_and_backfill(url: str, window: list[str], rounds: int, out: dict[str, Any]) -> None:
    """(1): the DBA baseline and `backfill --workers 1`, alternated `rounds` times on restored data;
    the median of each is kept (every sample too). Shared machines drift by tens of percent
    within minutes: alternating puts both under the same drift."""
    baselines, backfills = [], []
    for _ in range(max(1, rounds)):
        baselines.append(measure.baseline(url))
        data.restore(url)
        backfills.append(measure.run_cli(["backfill", *window, "--workers", "1"], url))
        data.restore(url)
    base_s = [b.seconds for b in baselines]
    job_s = [b.job_seconds if b.job_seconds is not None else b.wall_seconds for b in backfills]
    out["baseline"] = asdict(baselines[base_s.index(_median(base_s))])
    out["baseline_samples"] = base_s
    out["backfill_w1"] = asdict(backfills[job_s.index(_median(job_s))])
    out["backfill_w1_samples"] = job_s


def _measure_big(url: str, until: datetime, out: dict[str, Any], samples: int) -> None:
    _say("EXPLAIN capture on the large table: an in-process `run` (1 h)")
    with measure.capture_spend_logs_statements() as captured:
        _run_last_hour_in_process(url, until)
    data.restore(url)
    _say("(2) `run`, one-hour window, large table")
    out["run_big"], out["run_big_samples"] = _median_run(url, until, samples)
    # today's rollup, which every `run` rebuilds
    today = until.astimezone(timezone.utc).date() if until.tzinfo else until.date()
    out["explain_big"] = [asdict(e) for e in (*measure.explain(url, captured), measure.explain_rollup(url, today))]


def _seed(admin_url: str, name: str, wheel: Path, *, rows: int, metadata_bytes: int,
          args: argparse.Namespace, until: datetime) -> data.Seeded:
    since, until = data.time_range(until, rows, args.rows_per_day)
    _say(f"seeding {rows:,} rows ({since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC) into {name}")
    url = data.create_database(admin_url, name, wheel)
    started = time.monotonic()
    seeded = data.seed(url, rows=rows, since=since, until=until, metadata_bytes=metadata_bytes,
                       mix=data.shares(args.broken_share, args.untraced_share), seed_value=args.seed)
    _say(f"seeded in {time.monotonic() - started:.1f} s: {seeded.synth.traces:,} traces,"
         f" table+TOAST {seeded.table_bytes / rows:,.0f} B/row")
    return seeded


def _seed_info(seeded: data.Seeded, seconds: float) -> dict[str, Any]:
    return {"rows": seeded.rows, "since": seeded.since.isoformat(), "until": seeded.until.isoformat(),
            "traces": seeded.synth.traces, "kinds": seeded.synth.kinds, "seed_seconds": round(seconds, 1),
            "write_seconds": round(seeded.synth.seconds, 1),
            "generate_cpu_seconds": round(seeded.synth.generate_cpu_seconds, 1),
            "copy_seconds": round(seeded.synth.copy_seconds, 1),
            "table_toast_bytes": seeded.table_bytes, "table_toast_bytes_per_row": seeded.table_bytes / seeded.rows,
            "index_bytes": seeded.index_bytes, "trace_bytes": seeded.trace_bytes}


class _Results(dict[str, Any]):
    """Results so far, saved to `<out>.partial` after every figure (a long run that fails keeps them)."""

    def __init__(self, path: Path, **items: Any) -> None:
        super().__init__(**items)
        self.path = path

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.path.write_text(json.dumps(self, indent=2, default=str) + "\n", encoding="utf-8")


def run_benchmark(args: argparse.Namespace, admin_url: str, where: Path | None) -> dict[str, Any]:
    out = _Results(Path(args.out + ".partial"), started_at=datetime.now(timezone.utc).isoformat(),
                   cores=os.cpu_count(), parameters={k: v for k, v in vars(args).items() if k != "database_url"},
                   targets=TARGETS, versions=_versions(admin_url))
    out["disk"] = _check_disk(args, where)
    wheel = data.extras_wheel()
    until = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    names = [f"ttft_bench_{os.getpid()}_n", f"ttft_bench_{os.getpid()}_big"]
    try:
        started = time.monotonic()
        small = _seed(admin_url, names[0], wheel, rows=args.rows, metadata_bytes=args.metadata_bytes, args=args,
                      until=until)
        out["seed_small"] = _seed_info(small, time.monotonic() - started)
        _measure_main(small.url, small, args, out)
        if not args.keep:
            data.drop_database(admin_url, names[0])
        started = time.monotonic()
        big = _seed(admin_url, names[1], wheel, rows=args.rows * args.big_factor,
                    metadata_bytes=args.big_metadata_bytes, args=args, until=until)
        out["seed_big"] = _seed_info(big, time.monotonic() - started)
        _measure_big(big.url, big.until, out, args.run_samples)
    finally:
        if not args.keep:
            for name in names:
                data.drop_database(admin_url, name)
    out["finished_at"] = datetime.now(timezone.utc).isoformat()
    out.path.unlink(missing_ok=True)
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    server: EmbeddedServer | None = None
    where: Path | None = None
    try:
        if args.database_url:
            admin_url = args.database_url
        else:
            root = Path(tempfile.mkdtemp(prefix="ttft-reconcile-bench-", dir=demo_parent()))
            root.chmod(0o755)
            where = root
            _say(f"starting an embedded Postgres in {root}")
            server = EmbeddedServer(root, keep=False)
            admin_url = server.admin_url
        results = run_benchmark(args, admin_url, where)
    finally:
        if server is not None:
            server.stop()
    results["figures"] = figures(results)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(render(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
