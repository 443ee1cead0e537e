"""Running a command: logging setup, error translation to one line, exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import psycopg
from sqlalchemy import exc as sa_exc

from ttft_reconcile.db import describe_db_error
from ttft_reconcile.dburl import password_of, scrub
from ttft_reconcile.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ReconcileError

T = TypeVar("T")
log = logging.getLogger("ttft_reconcile")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ttft-reconcile: {message}", err=True)
    sys.exit(code)


def execute(kwargs: dict[str, Any], action: Callable[[], T]) -> T:
    """Run `action`; any error becomes one redacted line on stderr and its exit code.

    Passwords are masked where they stand (URLs, `password=`), never by searching for their text;
    a driver error is translated by describe_db_error (a URL parameter libpq rejects: exit 2).
    """
    configure_logging(kwargs.get("log_level") or "WARNING")
    secret = password_of(kwargs.get("database_url") or "")
    try:
        return action()
    except ReconcileError as error:
        if kwargs.get("traceback"):
            raise
        fail(scrub(str(error)), error.exit_code)
    except (sa_exc.SQLAlchemyError, psycopg.Error) as error:
        if kwargs.get("traceback"):
            raise
        translated = describe_db_error(error, password=secret)
        fail(scrub(str(translated)), translated.exit_code)
    except KeyboardInterrupt:
        if kwargs.get("traceback"):
            raise
        fail("interrupted; the open transaction was rolled back", EXIT_INTERRUPTED)
    except (OverflowError, UnicodeError) as error:
        if kwargs.get("traceback"):
            raise
        fail(f"a value is out of range or not valid text: {scrub(str(error))}", EXIT_USAGE)
    except BrokenPipeError:  # `export | head`: the reader has what it wanted
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        except OSError:
            pass
        sys.exit(0)
    except OSError as error:  # files of --output, --plot, --metrics-textfile
        if kwargs.get("traceback"):
            raise
        fail(scrub(f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")), EXIT_FAILED)


def echo_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, sort_keys=False, default=str))
