"""Database URLs as users have them (Prisma, libpq, SQLAlchemy forms), normalised and redacted.

Standard library only: the capture imports this inside the proxy process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

# Query parameters Prisma understands and libpq rejects ("invalid URI query parameter").
PRISMA_ONLY_PARAMETERS = frozenset(
    {
        "schema",
        "connection_limit",
        "pool_timeout",
        "socket_timeout",
        "sslaccept",
        "sslidentity",
        "pgbouncer",
        "statement_cache_size",
        "connect_timeout_ms",
    }
)
_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+psycopg2": "postgresql",
    "postgresql+psycopg3": "postgresql",
}


class DatabaseUrlError(ValueError):
    """The URL cannot be used; the message never contains the password."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL.

    `libpq` is a `postgresql://` URL libpq accepts; `sqlalchemy` the same for
    SQLAlchemy's psycopg 3 dialect; `litellm_schema` is where LiteLLM's tables live
    (Prisma's `schema=`, default `public`); `pgbouncer` says a transaction pooler is in
    front (Prisma's `pgbouncer=true`).
    """

    libpq: str
    litellm_schema: str
    pgbouncer: bool
    redacted: str
    dropped: tuple[str, ...]
    database: str

    @property
    def sqlalchemy(self) -> str:
        return "postgresql+psycopg" + self.libpq[len("postgresql") :]


def parse_database_url(raw: str) -> DatabaseUrl:
    """Normalise a Prisma/libpq/SQLAlchemy URL; raise DatabaseUrlError with a redacted message."""
    text = raw.strip()
    if not text:
        raise DatabaseUrlError("the database URL is empty")
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        shown = parts.scheme or text.split(":", 1)[0][:20]
        raise DatabaseUrlError(
            f"unsupported database URL scheme {shown!r}: use postgresql://, postgres:// or postgresql+psycopg://"
        )
    kept: list[tuple[str, str]] = []
    dropped: list[str] = []
    litellm_schema = "public"
    pgbouncer = False
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        lower = key.lower()
        if lower == "schema":
            litellm_schema = value or "public"
        if lower == "pgbouncer":
            pgbouncer = value.strip().lower() in {"1", "true", "yes", "on"}
        if lower in PRISMA_ONLY_PARAMETERS:
            dropped.append(key)
            continue
        kept.append((key, value))
    netloc = parts.netloc
    libpq = urlunsplit((scheme, netloc, parts.path, urlencode(kept, quote_via=quote, safe="/"), ""))
    database = unquote(parts.path.lstrip("/")) or _userinfo_user(netloc) or "postgres"
    for key, value in kept:
        if key.lower() == "dbname" and value:
            database = value
    return DatabaseUrl(
        libpq=libpq,
        litellm_schema=litellm_schema,
        pgbouncer=pgbouncer,
        redacted=redact(libpq),
        dropped=tuple(dropped),
        database=database,
    )


def _userinfo_user(netloc: str) -> str:
    if "@" not in netloc:
        return ""
    user = netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return unquote(user)


def redact(url: str) -> str:
    """Replace the password of a URL (userinfo or `password=` parameter) with `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(message: str, *secrets: str) -> str:
    """Remove every password-looking part and each given secret from an error message."""
    cleaned = message
    for secret in secrets:
        if secret:
            cleaned = cleaned.replace(secret, "***")
    cleaned = re.sub(r"(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", cleaned)
    cleaned = re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", cleaned)
    return cleaned


def password_of(raw: str) -> str:
    """The password in a URL, or '' (used to scrub driver error messages)."""
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        return ""
    secret = unquote(parts.password or "")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "password":
            secret = secret or value
    return secret
