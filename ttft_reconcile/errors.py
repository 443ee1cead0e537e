"""The one exception hierarchy and the process exit codes (DESIGN.md "Exit codes")."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PUBLISH_FAILED = 3
EXIT_LANE_HELD = 75
EXIT_INTERRUPTED = 130


class ReconcileError(Exception):
    """Base of every error the job reports as one line; exit code 1 unless a subclass says otherwise."""

    exit_code = EXIT_FAILED


class UsageError(ReconcileError):
    """Bad input from the user (flags, windows, names)."""

    exit_code = EXIT_USAGE


class DatabaseUnavailable(ReconcileError):
    """The database could not be reached or refused us."""


class SchemaMissing(ReconcileError):
    """LiteLLM's table or our own schema is not where it should be."""


class LaneHeld(ReconcileError):
    """Another process holds the lane this command needs."""

    exit_code = EXIT_LANE_HELD


class Interrupted(ReconcileError):
    """SIGINT/SIGTERM arrived; the message says whether the current batch committed."""

    exit_code = EXIT_INTERRUPTED


class PublishFailed(ReconcileError):
    """Corrections were committed but the metrics could not be published."""

    exit_code = EXIT_PUBLISH_FAILED
