"""A private PostgreSQL 15 cluster in a temp folder: for tests and benches, like shared/broker.py.

Production PostgreSQL is run by whoever runs the database (docs/cluster.md); this starts the
real server binary on a loopback port of its own. ``initdb`` refuses to run as root, so when we
are root the cluster belongs to the ``postgres`` user and ``initdb``/``pg_ctl`` run through
``runuser``. The folder is made outside pytest's ``tmp_path`` because that one is private to
its owner and the ``postgres`` user could not enter it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cloud.fleet.errors import FleetError

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INSTALL_HINT = (
    "PostgreSQL 15 is not installed (no {bin}). On Debian/Ubuntu run: "
    "sudo apt-get update && sudo apt-get install -y postgresql-15 "
    "(or provisioning/system-deps.sh postgres)"
)


def pg_bin() -> Path:
    if not (PG_BIN / "initdb").exists():
        raise FleetError(INSTALL_HINT.format(bin=PG_BIN / "initdb"))
    return PG_BIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """``start()`` runs initdb (first time) and pg_ctl start; ``stop()`` a fast shutdown."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, user: str = "parkwatch") -> None:
        self.bin = pg_bin()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="parkwatch-pg-"))
        self.datadir = self.workdir / "data"
        self.port = port or _free_port()
        self.user = user
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as e:
                raise FleetError(
                    "running as root but there is no 'postgres' user to own the test cluster; "
                    "install postgresql-15 (it creates the user)"
                ) from e
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.workdir, 0o700)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.started = False

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        cmd = [*self._as, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            log = self.workdir / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise FleetError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()}\n{tail}")

    def start(self) -> None:
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                str(self.bin / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", self.user,
                "-E", "UTF8", "--no-sync",
            )  # fmt: skip
        # fsync stays on: the bench measures what a real commit costs.
        opts = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-o", opts,
            "-l", str(self.workdir / "postgres.log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        self.started = True
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        if self.started:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")
            self.started = False

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
