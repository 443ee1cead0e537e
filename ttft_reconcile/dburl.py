"""Database URLs as users have them (Prisma, libpq, SQLAlchemy forms), normalised and redacted.

Standard library only: the capture imports this inside the proxy process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

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
    try:
        parts = urlsplit(text)
    except ValueError as error:
        raise DatabaseUrlError(f"the database URL is not valid ({_safe_reason(error)})") from None
    if parts.fragment or "@" in parts.query or "@" in parts.path or parts.netloc.count("@") > 1:
        # An unescaped '#', '?', '/' or '@' in the password splits the URL in the wrong place (libpq
        # ends the user name and password at the first '@' and would show the rest as the host).
        raise DatabaseUrlError(
            "the database URL is not valid: percent-encode special characters in the user name and"
            " password (# as %23, ? as %3F, / as %2F, @ as %40, % as %25)"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise DatabaseUrlError(f"the database URL is not valid ({_safe_reason(error)})") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        shown = parts.scheme or text.split(":", 1)[0][:20]
        raise DatabaseUrlError(
            f"unsupported database URL scheme {shown!r}: use postgresql://, postgres:// or postgresql+psycopg://"
        )
    if re.search(r"\s|%(?![0-9A-Fa-f]{2})", text.split("?", 1)[0]):
        # libpq rejects these and quotes the part it could not decode: the password, maybe.
        raise DatabaseUrlError(
            "the database URL is not valid: percent-encode spaces and '%' in the user name, password and"
            " database name (space as %20, % as %25)"
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
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.lower().startswith("%2f"):
        # libpq's percent-encoded socket directory as host: SQLAlchemy would resolve it as a name.
        directory, _, port = unquote(hostport).partition(":") if not hostport.startswith("[") else (hostport, "", "")
        kept.append(("host", directory))
        if port:
            kept.append(("port", port))
        netloc = f"{userinfo}{at}"
    query = urlencode(kept, quote_via=quote, safe="/")
    # Built by hand: urlunsplit drops the empty authority of `postgresql:///db?host=/socket`.
    libpq = f"{scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
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


def _safe_reason(error: ValueError) -> str:
    reason = str(error)
    return "port is not a number" if "int()" in reason or "Port" in reason else reason.split(":")[0]


def _userinfo_user(netloc: str) -> str:
    if "@" not in netloc:
        return ""
    user = netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return unquote(user)


# The userinfo runs to the LAST '@' (of the URL; of its whitespace-delimited token in a message), so
# an unescaped '@', '#', '/' or '?' in a password cannot end it early and leave a part shown.
_URL_USERINFO = re.compile(r"([a-zA-Z][\w+.-]*://)(.*)@")
_POSTGRES_URL_USERINFO = re.compile(r"(?i)(postgres(?:ql)?(?:\+\w+)?://)(\S*)@")
# `password=` as a URL query parameter: the value runs to the next '&' (or the end of the token).
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&\s]*")
# `password=` in libpq conninfo (and PGPASSWORD=): a quoted value with backslash escapes (an
# unterminated one runs to the end), else one word.
_KEYWORD_PASSWORD = re.compile(r"""(?i)(?<![?&])(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)""")


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match.group(2).partition(":")
    return f"{match.group(1)}{user}:***@" if colon else match.group(0)


def redact(url: str) -> str:
    """Replace the password of a URL (userinfo or `password=` parameter) with `***`."""
    userinfo = _URL_USERINFO.match(url)
    shown = _mask_userinfo(userinfo) + url[userinfo.end() :] if userinfo else url
    return _QUERY_PASSWORD.sub(r"\1***", shown)


def scrub(message: str, *secrets: str) -> str:
    """Mask the passwords an error message can carry, by their place only.

    Masked: the userinfo password of every postgres/postgresql(+driver) URL, `password=` URL query
    parameters and `password=` conninfo key/values, quoted or not. Nothing else: `secrets` is
    accepted for existing callers and ignored, since replacing a password wherever its text occurs
    shows it (password `e`: "cannot us*** th*** databas***: conn***ction fail***d").
    """
    del secrets
    cleaned = _POSTGRES_URL_USERINFO.sub(_mask_userinfo, message)
    cleaned = _QUERY_PASSWORD.sub(r"\1***", cleaned)
    return _KEYWORD_PASSWORD.sub(r"\1***", cleaned)


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
