"""Servers the reliability tests own: a throwaway PostgreSQL cluster and a PgBouncer.

Both run as the `postgres` OS user (Postgres and Debian's PgBouncer refuse root), listen on
free loopback ports and keep their files in a 0755 temp dir that is removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests import services


def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(out.strip())
    return path if (path / "initdb").exists() else None


def _as_postgres(*argv: str) -> list[str]:
    """Run as the postgres user when we are root (runuser), as ourselves otherwise."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


def _workdir(prefix: str, owner: str = "postgres") -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


def _bouncer_user(host: str) -> str:
    """Who runs PgBouncer as root: the owner of the server's socket directory (only it may enter
    the embedded server's 0700 data directory), else `postgres`."""
    if host.startswith("/") and os.path.isdir(host):
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
        if owner != "root":
            return owner
    return "postgres"


class Cluster:
    """A PostgreSQL cluster from Debian's binaries: TCP on 127.0.0.1:<free port>, socket in its dir.

    pg_hba: the `postgres` superuser is trusted (socket and TCP); every other role must
    authenticate over TCP (md5 for the role `md5_role`, scram-sha-256 for the rest).
    """

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            services.missing("PostgreSQL server binaries (pg_config --bindir) are not installed")
        assert bindir is not None
        self.bin = bindir
        self.root = _workdir("ttft-rel-pg-")
        self.data = self.root / "data"
        self.port = services.free_port()
        self.log = self.root / "server.log"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-instructions")
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all md5_role 127.0.0.1/32 md5\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.start()

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run(_as_postgres(str(self.bin / exe), *args), check=True, capture_output=True, text=True,
                       timeout=60)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


class PgBouncer:
    """Debian's pgbouncer in front of `target_url`, pool_mode=transaction, one server connection."""

    def __init__(self, target_url: str, *, pool_size: int = 1) -> None:
        exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if exe is None:
            services.missing("pgbouncer is not installed (apt-get install pgbouncer)")
        assert exe is not None
        target = conninfo_to_dict(target_url)
        self.user = str(target.get("user") or "postgres")
        host = str(target.get("host") or "127.0.0.1")
        run_as = _bouncer_user(host)
        self.root = _workdir("ttft-rel-bouncer-", run_as)
        self.port = services.free_port()
        port = target.get("port") or 5432
        (self.root / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
        )
        for name in ("users.txt", "pgbouncer.ini"):
            os.chmod(self.root / name, 0o644)
        self.proc = subprocess.Popen([exe, str(self.root / "pgbouncer.ini")],
                                     user=run_as if os.geteuid() == 0 else None,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        err = self.proc.stderr.read().decode() if self.proc.stderr and self.proc.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"pgbouncer did not start on port {self.port}: {err[-500:]}")

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
