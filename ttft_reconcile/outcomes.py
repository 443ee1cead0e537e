"""The candidate outcomes: exactly one per candidate row, so the counts add up."""

from __future__ import annotations

from typing import Final

REPAIRED: Final = "repaired"
CONFIRMED: Final = "confirmed"
NO_TRACE: Final = "no_trace"
NOT_STREAMING: Final = "not_streaming"
NO_FIRST_TOKEN: Final = "no_first_token"
OUT_OF_BOUNDS: Final = "out_of_bounds"
AMBIGUOUS: Final = "ambiguous"
CHANGED: Final = "changed"

OUTCOMES: Final[tuple[str, ...]] = (
    REPAIRED,
    CONFIRMED,
    NO_TRACE,
    NOT_STREAMING,
    NO_FIRST_TOKEN,
    OUT_OF_BOUNDS,
    AMBIGUOUS,
    CHANGED,
)

# rollback's own outcomes per correction
REVERTED: Final = "reverted"
ROLLBACK_OUTCOMES: Final[tuple[str, ...]] = (REVERTED, CHANGED)


def empty_counts(names: tuple[str, ...] = OUTCOMES) -> dict[str, int]:
    return {name: 0 for name in names}
