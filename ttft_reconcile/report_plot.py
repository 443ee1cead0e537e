"""`report --plot FILE.png`: TTFT histogram before vs after, and rows per UTC day by source.

matplotlib is the optional extra `plot` (`pip install '.[plot]' from the checkout`); it is imported
only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ttft_reconcile.errors import UsageError
from ttft_reconcile.report import Report


@dataclass(frozen=True)
class DailySources:
    """Rows per UTC day by source, summed over model groups (the plot's right panel)."""

    days: tuple[date, ...]
    original: tuple[int, ...]
    reconciled: tuple[int, ...]
    unresolved: tuple[int, ...]


def daily_sources(report: Report) -> DailySources:
    totals: dict[date, list[int]] = {}
    for row in report.rows:
        acc = totals.setdefault(row.day, [0, 0, 0])
        acc[0] += row.n_original
        acc[1] += row.n_reconciled
        acc[2] += row.n_unresolved
    days = tuple(sorted(totals))
    return DailySources(
        days=days,
        original=tuple(totals[d][0] for d in days),
        reconciled=tuple(totals[d][1] for d in days),
        unresolved=tuple(totals[d][2] for d in days),
    )


def render(report: Report, path: str | Path) -> Path:
    """Write the two-panel PNG; raises UsageError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install '.[plot]' from the checkout") from None

    hist = report.histogram
    daily = daily_sources(report)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    positions = list(range(len(hist.before)))
    width = 0.42
    left.bar([p - width / 2 for p in positions], hist.before, width, label="before (as LiteLLM wrote it)",
             color="#c44e52")
    left.bar([p + width / 2 for p in positions], hist.after, width, label="after (best TTFT)", color="#4c72b0")
    left.set_xticks(positions)
    left.set_xticklabels(hist.labels(), rotation=45, ha="right", fontsize=8)
    left.set_ylabel("requests (original + reconciled)")
    left.set_title("TTFT distribution")
    left.legend(fontsize=8)

    x = list(range(len(daily.days)))
    bottom_two = [o + r for o, r in zip(daily.original, daily.reconciled, strict=True)]
    right.bar(x, daily.original, label="original", color="#55a868")
    right.bar(x, daily.reconciled, bottom=daily.original, label="reconciled", color="#4c72b0")
    right.bar(x, daily.unresolved, bottom=bottom_two, label="unresolved", color="#bbbbbb")
    right.set_xticks(x)
    right.set_xticklabels([d.isoformat() for d in daily.days], rotation=45, ha="right", fontsize=8)
    right.set_ylabel("requests")
    right.set_title("Rows per UTC day by source")
    tallest = max((b + u for b, u in zip(bottom_two, daily.unresolved, strict=True)), default=0)
    right.set_ylim(0, max(tallest, 1) * 1.2)  # headroom for the legend above the bars
    right.legend(fontsize=8, loc="upper left", ncol=3)

    fig.suptitle(f"ttft-reconcile report {report.since:%Y-%m-%d %H:%M} - {report.until:%Y-%m-%d %H:%M} UTC")
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
