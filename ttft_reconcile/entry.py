"""The console script's entry point: signal handlers first, then the (slower) command imports.

A SIGINT/SIGTERM that arrives while Python still imports the CLI (~0.5 s, before any work)
exits 130 with one line instead of a traceback or a silent 143. From then on SIGTERM acts like
Ctrl-C (KeyboardInterrupt): commands that write install their own two-step handlers, and every
other moment ends in the usual one-line "interrupted" exit 130. Once the command has finished,
further signals are ignored: the exit code it chose stands.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

EXIT_INTERRUPTED = 130  # errors.EXIT_INTERRUPTED, not imported: this module must stay tiny


def _before_any_work(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"ttft-reconcile: interrupted by {name} while starting, before any work\n".encode())
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _before_any_work)
    from ttft_reconcile.cli import main as cli_main

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        cli_main()
    finally:
        # The outcome is decided (and printed): a signal now must not turn exit 130 or 0 into a
        # death by SIGTERM while the interpreter shuts down (it restores default handlers then).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
