"""One HTTP call to a Prometheus Pushgateway, with every failure turned into one redacted line.

Addresses are `host:port` or `http(s)://host:port[/prefix]`; `user:password@` in them becomes
HTTP basic auth and is never shown. Timeouts are seconds.
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import (
    basic_auth_handler,
    default_handler,
    delete_from_gateway,
    push_to_gateway,
    pushadd_to_gateway,
)

from ttft_reconcile.dburl import redact, scrub
from ttft_reconcile.errors import PublishFailed, UsageError

log = logging.getLogger(__name__)

MAX_LINE: Final = 300
_VERBS: Final = {"PUT": "push", "POST": "push (add)", "DELETE": "delete"}
Handler = Callable[..., Callable[[], None]]


def call(
    method: str,
    address: str,
    job: str,
    key: Mapping[str, str],
    registry: CollectorRegistry,
    timeout: float,
) -> None:
    """PUT (replace the group), POST (replace only the names sent) or DELETE (the group).

    Raises PublishFailed: refused, unreachable, no answer within `timeout`, HTTP 4xx/5xx.
    """
    try:
        url, handler = _endpoint(address)
        if method == "PUT":
            send = partial(push_to_gateway, url, job, registry, grouping_key=dict(key), timeout=timeout,
                           handler=handler)
        elif method == "POST":
            send = partial(pushadd_to_gateway, url, job, registry, grouping_key=dict(key), timeout=timeout,
                           handler=handler)
        elif method == "DELETE":
            send = partial(delete_from_gateway, url, job, grouping_key=dict(key), timeout=timeout, handler=handler)
        else:
            raise ValueError(f"unknown method {method}")
        _within(send, timeout)
    except (OSError, ValueError, http.client.HTTPException) as error:
        group = ",".join(f"{name}={value}" for name, value in {"job": job, **key}.items())
        message = (f"could not {_VERBS.get(method, method)} metrics group {{{group}}} at Pushgateway"
                   f" {shown(address)}: {_describe(error, timeout)}")
        raise PublishFailed(one_line(message)) from None
    log.info("Pushgateway %s: %s group %s", shown(address), method, dict(key))


def _within(send: Callable[[], None], timeout: float) -> None:
    """Run `send` with a deadline on the whole exchange: the client's own timeout is per socket read,
    so a gateway that trickles a byte every few seconds would otherwise hold the job forever."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            send()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed back to the caller's thread
            outcome.append(error)

    worker = threading.Thread(target=target, name="pushgateway", daemon=True)
    worker.start()
    worker.join(timeout * 2 + 1)
    if not outcome:
        raise TimeoutError(f"no complete answer within {timeout * 2 + 1:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def check_address(address: str) -> str:
    """`host:port` or an http(s) URL; raise UsageError (password redacted) for anything else."""
    wrong = f"not a Pushgateway address: {shown(address)} (use host:port or http(s)://host:port)"
    try:
        parts = urlsplit(_with_scheme(address))
        parts.port  # noqa: B018 - raises ValueError for a port outside 0..65535
    except ValueError:
        raise UsageError(wrong) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(wrong)
    return address


def shown(address: str | None) -> str | None:
    """The address without its password (a schemeless `user:pw@host:port` included)."""
    if not address:
        return None
    if "://" in address:
        return redact(address)
    return redact("http://" + address)[len("http://"):]


def one_line(message: str) -> str:
    """`message` on one line, at most MAX_LINE characters, passwords masked."""
    flat = " ".join(scrub(message).split())
    return flat if len(flat) <= MAX_LINE else flat[: MAX_LINE - 3] + "..."


def _with_scheme(address: str) -> str:
    return address if "://" in address else "http://" + address


def _endpoint(address: str) -> tuple[str, Handler]:
    """The gateway URL without credentials, and a handler sending them as HTTP basic auth."""
    parts = urlsplit(_with_scheme(address))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a host:port or http(s) URL")
    if "@" not in parts.netloc:
        return address, default_handler
    username, password = unquote(parts.username or ""), unquote(parts.password or "")
    bare = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, ""))

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, HTTPError):
        try:
            body = error.read(400).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            body = ""
        text = f"HTTP {error.code} {error.reason}"
        return f"{text}: {body}" if body.strip() else text
    reason: object = error.reason if isinstance(error, URLError) else error
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s (timed out)"
    return str(reason) or type(reason).__name__
