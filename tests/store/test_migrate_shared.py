"""Several engine processes starting together on one new PostgreSQL database (ARCHITECTURE "Scale").

Alembic keeps its migration context in module globals, so each migration runs
in a process of its own, as it does in production.
"""

import subprocess
import sys
import time

from sqlalchemy import create_engine, text

from tests.conftest import ROOT, PostgresServer

#: Each process imports everything first, then waits for the common start time.
MIGRATE = """
import sys, time
from sqlalchemy import create_engine
from engine.store.migrate import upgrade
engine = create_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
upgrade(engine)
"""


def test_engines_migrating_a_new_database_at_once_all_succeed(postgres: PostgresServer) -> None:
    url = postgres.create_database("migrate_together")
    start_at = str(time.time() + 5)
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, url, start_at], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.communicate(timeout=120)[1], p.wait()) for p in procs]
    errors = [err[-600:] for err, returncode in outcomes if returncode != 0]
    assert errors == []
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()
