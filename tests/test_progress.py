"""Progress lines: throttled, but the final state is always shown."""

from __future__ import annotations

import io
from datetime import datetime

from ttft_reconcile.cli.progress import ProgressPrinter
from ttft_reconcile.job import Progress

T0 = datetime(2026, 3, 1)


def progress(scanned: int, position_hour: int, **kw: object) -> Progress:
    return Progress(mode="backfill", batches=scanned // 10, scanned=scanned, outcomes={"repaired": scanned // 2},
                    position=T0.replace(hour=position_hour), since=T0, until=T0.replace(day=2), **kw)  # type: ignore[arg-type]


def test_plain_lines_are_throttled_and_the_last_state_is_printed_on_close() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, interval_s=3600, tty=False)
    printer(progress(10, 1))
    printer(progress(20, 6))
    printer(progress(30, 12))
    printer.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "10 candidates, 5 repaired" in lines[0]
    assert "30 candidates, 15 repaired" in lines[1] and "50.0%" in lines[1]


def test_tty_redraws_one_line_and_slices_drive_the_fraction() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    printer.interval_s = 0
    printer(progress(10, 1, slices_done=1, slices_total=4))
    printer(progress(20, 2, slices_done=3, slices_total=4))
    printer.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2 and text.endswith("\n")
    assert "77.1%" in text and "slices 3/4" in text  # 3 slices done, a twelfth of the fourth


def test_a_one_slice_backfill_moves_before_it_finishes() -> None:
    assert ProgressPrinter.fraction(progress(10, 12, slices_done=0, slices_total=1)) == 0.5
    assert ProgressPrinter.fraction(progress(10, 12, slices_done=1, slices_total=1)) == 1.0


def test_completed_work_ends_at_100_percent_and_a_dry_run_says_would_be() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, interval_s=0, tty=False, dry_run=True)
    printer(progress(30, 12))
    printer.close(completed=True)
    lines = out.getvalue().splitlines()
    assert "50.0%" in lines[0] and "15 would be repaired" in lines[0]
    assert lines[1].startswith("100.0% ") and "30 candidates" in lines[1]
    stopped = io.StringIO()
    interrupted = ProgressPrinter(stopped, interval_s=0, tty=False)
    interrupted(progress(30, 12))
    interrupted.close()  # interrupted: the last state stays as it was
    [only] = stopped.getvalue().splitlines()
    assert only.startswith("50.0% backfill: 30 candidates, 15 repaired,")
