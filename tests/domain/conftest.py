"""Fixtures for domain tests: a migrated SQLite database and the two handlers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.store.database import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh database at the newest revision."""
    database = Database(f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def engine_config(tmp_path: Path) -> EngineConfig:
    """Default settings with the mappings directory in ``tmp_path`` (no control table file)."""
    return EngineConfig(mappings_dir=tmp_path / "mappings", timezone="UTC")


@pytest.fixture
def orders_handler(engine_config: EngineConfig) -> OrdersHandler:
    return OrdersHandler(order_policy(engine_config))


@pytest.fixture
def patients_handler(engine_config: EngineConfig) -> PatientsHandler:
    return PatientsHandler(patient_policy(engine_config))
