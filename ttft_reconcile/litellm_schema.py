"""Builds LiteLLM's real schema from the migration SQL shipped in `litellm-proxy-extras`.

Used by `demo` and by the tests; the job itself never runs DDL against LiteLLM's tables.
The source is the installed `litellm_proxy_extras` package, a wheel file or an unpacked folder.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def iter_migrations(source: str | Path | None = None) -> Iterator[Migration]:
    """Migrations in Prisma's order (byte order of the folder names)."""
    if source is None:
        spec = importlib.util.find_spec("litellm_proxy_extras")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("litellm-proxy-extras is not installed")
        source = Path(next(iter(spec.submodule_search_locations)))
    path = Path(source)
    if path.is_file() and path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            names = sorted(
                n for n in wheel.namelist() if n.startswith("litellm_proxy_extras/migrations/")
                and n.endswith("/migration.sql")
            )
            for name in names:
                yield Migration(name.split("/")[-2], wheel.read(name).decode("utf-8"))
        return
    folder = path / "migrations" if (path / "migrations").is_dir() else path
    for sql_file in sorted(folder.glob("*/migration.sql"), key=lambda p: p.parent.name.encode()):
        yield Migration(sql_file.parent.name, sql_file.read_text(encoding="utf-8"))


def apply_litellm_schema(conninfo: str, source: str | Path | None = None, *, schema: str = "public") -> int:
    """Apply every migration into `schema` of the database at `conninfo`; returns how many ran."""
    count = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if schema != "public":
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        for migration in iter_migrations(source):
            # As Prisma does: one simple-protocol query per file, so a multi-statement file
            # runs as one implicit transaction and a single CREATE INDEX CONCURRENTLY outside one.
            conn.execute(migration.sql.encode())  # type: ignore[call-overload]
            count += 1
    _build_post_deploy_indexes(conninfo, source, schema)
    return count


def _build_post_deploy_indexes(conninfo: str, source: str | Path | None, schema: str) -> None:
    """Newer extras build two SpendLogs indexes after `migrate deploy`; run their own code for it."""
    path = str(source) if source is not None else ""
    probe = (
        "import sys\n"
        "if sys.argv[2]: sys.path.insert(0, sys.argv[2])\n"
        "try:\n"
        "    from litellm_proxy_extras.request_log_indexes import ensure_request_log_indexes\n"
        "except ImportError:\n"
        "    sys.exit(0)\n"
        "sys.exit(0 if ensure_request_log_indexes(sys.argv[1], sys.argv[3]) else 1)\n"
    )
    subprocess.run([sys.executable, "-c", probe, conninfo, path, schema], check=True, capture_output=True, timeout=300)
