"""A throw-away PostgreSQL server for tests of the metadata database (``make test`` installs the binaries).

The ``postgres_server`` fixture is registered in ``tests/conftest.py``; tests that need an empty
database call ``postgres_server.create_database()``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text


def pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if candidates:
        return max(candidates, key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    pytest.fail(
        f"PostgreSQL binary {name!r} not found (not on PATH, not in /usr/lib/postgresql/*/bin). "
        "Run `make test`, which installs PostgreSQL (`make postgres`) before running the tests.",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; return its name."""
        name = f"flywheel_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster with trust auth on a free local port, stopped after the session."""
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    data_dir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root: the cluster belongs to the postgres user.
        shutil.chown(data_dir, user="postgres", group="postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    log_file = data_dir / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_owner, *args], capture_output=True, text=True, timeout=60)

    done = run(initdb, "-D", str(data_dir), "--auth=trust", "-U", "postgres", "--no-sync")
    if done.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)
    options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    done = run(pg_ctl, "-D", str(data_dir), "-o", options, "-l", str(log_file), "-w", "start")
    if done.returncode != 0:
        server_log = log_file.read_text() if log_file.exists() else ""
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{server_log}", pytrace=False)
    try:
        yield PostgresServer("127.0.0.1", port)
    finally:
        run(pg_ctl, "-D", str(data_dir), "stop", "-m", "fast")
        shutil.rmtree(data_dir, ignore_errors=True)
