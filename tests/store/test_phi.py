"""The store keeps PHI and secrets out of errors and logs, and its files owner-only."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from engine.errors import ConfigError
from engine.logs import PHISafeFormatter
from engine.store.database import Database, masked_url
from engine.store.schema import audit_events
from tests.conftest import migrated

PATIENT_ID = "PHIID98765"


def _refused(conn: Connection) -> None:
    """An INSERT the database refuses (NOT NULL) whose other values are PHI."""
    conn.execute(insert(audit_events).values(at=datetime.now(UTC), actor=None, action="a",
                                             object_type="patient", object_id=PATIENT_ID, detail=""))


def test_a_refused_statement_does_not_show_its_parameters(db: Database) -> None:
    with pytest.raises(IntegrityError) as caught:
        db.writer.call(_refused)

    assert "[SQL parameters hidden due to hide_parameters=True]" in str(caught.value)


@pytest.fixture
def debug_logging() -> Iterator[None]:
    logger = logging.getLogger("engine")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(level)


def test_at_debug_a_refused_statement_shows_its_parameters(tmp_path: Path, debug_logging: None) -> None:
    db = next(migrated(f"sqlite:///{tmp_path / 'radbridge.db'}"))
    try:
        with pytest.raises(IntegrityError) as caught:
            db.writer.call(_refused)
    finally:
        db.close()

    assert PATIENT_ID in str(caught.value)


def test_a_logged_refused_statement_carries_no_phi_on_either_backend(db: Database) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PHISafeFormatter(redact=True))
    logger = logging.getLogger("engine.test.store")
    logger.addHandler(handler)
    try:
        db.writer.call(_refused)
    except IntegrityError:
        logger.exception("handler failed on message %s", 7)
    finally:
        logger.removeHandler(handler)

    assert "IntegrityError" in stream.getvalue()
    assert PATIENT_ID not in stream.getvalue()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_sqlite_database_and_its_wal_files_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "new" / "radbridge.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
        db.writer.call(lambda c: c.execute(insert(audit_events).values(
            at=datetime.now(UTC), actor="t", action="a", object_type="x", object_id="1", detail="")))
        modes = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        db.close()

    assert mode(path.parent) == 0o700
    assert modes["radbridge.db"] == modes["radbridge.db-wal"] == modes["radbridge.db-shm"] == 0o600


def test_an_existing_database_file_open_to_others_is_tightened(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "radbridge.db"
    Database(f"sqlite:///{path}").close()
    os.chmod(path, 0o644)

    with caplog.at_level(logging.WARNING, logger="engine.datadir"):
        Database(f"sqlite:///{path}").close()

    assert mode(path) == 0o600
    assert f"{path} was mode 644" in caplog.text


def test_the_display_url_masks_the_password() -> None:
    url = "postgresql+psycopg://radbridge:s3cr3t@db.example/radbridge"

    assert masked_url(url) == "postgresql+psycopg://radbridge:***@db.example/radbridge"


def test_an_unparsable_url_is_a_config_error_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Database("postgresql+psycopg://radbridge:s3cr3t@db.example:notaport/radbridge")

    assert "s3cr3t" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
