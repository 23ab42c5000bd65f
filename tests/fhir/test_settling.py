"""Studies still receiving images are projected when they settle (engine.fhir.settling), on both backends."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select, update

from engine.domain.instance_tables import instances
from engine.domain.tables import series, studies
from engine.fhir.model import FhirSettings
from engine.fhir.projector import Projector, apply, collect, project_all
from engine.fhir.search import read
from engine.fhir.settling import StudySettling
from engine.fhir.tables import fhir_pending, fhir_resources
from engine.store.database import Database

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
SETTINGS = FhirSettings(UTC)
UID = "1.2.826.0.1.3680043.10.995.7"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _study(conn: Connection) -> tuple[int, int]:
    study = conn.execute(insert(studies).values(study_instance_uid=UID, first_seen_at=NOW, last_seen_at=NOW,
                                                modalities_in_study="CT", patient_id="P1")).inserted_primary_key[0]
    one = conn.execute(insert(series).values(study_pk=study, series_instance_uid=f"{UID}.1", modality="CT",
                                             number_of_instances=0, series_number=1, first_seen_at=NOW,
                                             last_seen_at=NOW)).inserted_primary_key[0]
    return int(study), int(one)


def _add(conn: Connection, study: int, one: int, n: int) -> None:
    """Instance ``n`` as the receive path indexes it: the row, and the series' and study's counts."""
    conn.execute(insert(instances).values(
        study_pk=study, series_pk=one, sop_instance_uid=f"{UID}.1.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", size=1, sha256="0" * 64, location="primary", path=f"{n}.dcm",
        received_at=NOW, instance_number=n))  # fmt: skip
    conn.execute(update(series).where(series.c.id == one).values(number_of_instances=series.c.number_of_instances + 1))
    conn.execute(update(studies).where(studies.c.id == study).values(number_of_instances=n, number_of_series=1))


def _pending_keys(db: Database) -> list[tuple[str, str]]:
    return db.read(lambda c: [(r.kind, r.key) for r in c.execute(select(fhir_pending.c.kind, fhir_pending.c.key))])


def _instances_shown(db: Database) -> int:
    stored = db.read(lambda c: read(c, "ImagingStudy", UID))
    return 0 if stored is None else int(json.loads(stored.json).get("numberOfInstances", 0))


def _version(db: Database) -> int:
    return int(db.read(lambda c: c.execute(select(func.max(fhir_resources.c.version_id)).where(
        fhir_resources.c.res_type == "ImagingStudy", fhir_resources.c.res_id == UID)).scalar() or 0))


# --------------------------------------------------------------------------- the rule, with a clock


def test_a_study_first_seen_changing_is_projected_at_once_and_then_held_while_it_changes(db: Database) -> None:
    clock, held = Clock(), []
    settling = StudySettling(settle=1.0, max_delay=10.0, clock=clock)
    study, one = db.writer.call(_study)
    key = str(study)

    def cycle() -> None:
        projection = db.read(lambda c: collect(c, SETTINGS, 1000, settling))
        db.writer.call(lambda c: apply(c, projection))
        settling.projected(projection.studies)
        held.append(key not in projection.studies)

    db.writer.call(lambda c: _add(c, study, one, 1))
    cycle()
    assert held == [False] and _instances_shown(db) == 1  # the first change: at once
    for n in range(2, 6):  # an image every 0.5 s: held, its rows kept
        clock.now += 0.5
        db.writer.call(lambda c, n=n: _add(c, study, one, n))
        cycle()
    assert held[1:] == [True] * 4
    assert _instances_shown(db) == 1
    assert ("study", key) in _pending_keys(db)
    assert settling.next_look() is not None and 0 < settling.next_look() <= 1.0  # type: ignore[operator]
    clock.now += 0.6  # not yet a second without a change
    cycle()
    assert held[-1] is True
    clock.now += 0.5  # now it has settled: every pending row of it consumed by one cycle
    cycle()
    assert held[-1] is False and _instances_shown(db) == 5
    assert _pending_keys(db) == []
    assert settling.next_look() is None


def test_a_study_that_keeps_changing_is_projected_every_max_delay(db: Database) -> None:
    clock = Clock()
    settling = StudySettling(settle=1.0, max_delay=3.0, clock=clock)
    study, one = db.writer.call(_study)
    shown = []
    for n in range(1, 26):  # an image every 0.25 s for 6 s, a cycle after each
        db.writer.call(lambda c, n=n: _add(c, study, one, n))
        projection = db.read(lambda c: collect(c, SETTINGS, 1000, settling))
        db.writer.call(lambda c, p=projection: apply(c, p))
        settling.projected(projection.studies)
        shown.append(_instances_shown(db))
        clock.now += 0.25
    assert len(set(shown)) == 3  # the first image, then every 3 s: 1, 13, 25
    assert shown[0] == 1 and shown[-1] == 25
    assert _version(db) == 3


def test_settle_zero_holds_nothing_and_other_kinds_are_never_held(db: Database) -> None:
    from engine.domain.tables import patients

    clock = Clock()
    settling = StudySettling(settle=0.0, clock=clock)
    study, one = db.writer.call(_study)
    for n in (1, 2, 3):
        db.writer.call(lambda c, n=n: _add(c, study, one, n))
        projection = db.read(lambda c: collect(c, SETTINGS, 1000, settling))
        assert projection.studies == {str(study)}
    held = StudySettling(settle=5.0, max_delay=60.0, clock=clock)
    held.projected([str(study)])
    db.writer.call(lambda c: _add(c, study, one, 4))
    db.writer.call(lambda c: c.execute(insert(patients).values(patient_id="P9", created_at=NOW, updated_at=NOW)))
    projection = db.read(lambda c: collect(c, SETTINGS, 1000, held))
    assert projection.studies == frozenset()
    assert {res_type for res_type, _, _ in projection.resources} == {"Patient"}


def test_remembered_studies_are_bounded_and_a_restart_forgets_nothing_pending(db: Database) -> None:
    clock = Clock()
    settling = StudySettling(clock=clock, keep=10)
    for n in range(50):
        clock.now += 1
        settling.projected([f"s{n}"])
    assert len(settling._seen) == 10
    assert set(settling._seen) == {f"s{n}" for n in range(40, 50)}
    # Held rows are rows in the database: project_all (a new process, no memory) consumes them.
    study, one = db.writer.call(_study)
    settling.projected([str(study)])
    db.writer.call(lambda c: _add(c, study, one, 1))
    assert db.read(lambda c: collect(c, SETTINGS, 1000, settling)).studies == frozenset()
    project_all(db, SETTINGS)
    assert _pending_keys(db) == [] and _instances_shown(db) == 1


# --------------------------------------------------------------------------- the projector task


def test_a_burst_of_images_is_projected_a_few_times_and_its_end_within_the_settle_time(db: Database) -> None:
    """300 instances stored over ~3 s in their own transactions (a modality sending a series): the running
    projector stores the ImagingStudy a few times, not at every cycle (6 or more), and shows every instance
    about a second after the last one."""
    study, one = db.writer.call(_study)

    async def run() -> tuple[float, int]:
        projector = Projector(db, SETTINGS, debounce=0.05, settling=StudySettling(settle=1.0, max_delay=10.0))
        await projector.start()
        loop = asyncio.get_running_loop()
        for n in range(1, 301):
            await loop.run_in_executor(None, db.writer.call, lambda c, n=n: _add(c, study, one, n))
            await asyncio.sleep(0.01)
        last = time.monotonic()
        while _instances_shown(db) != 300:
            assert time.monotonic() - last < 10, "the settled study was never projected"
            await asyncio.sleep(0.02)
        waited = time.monotonic() - last
        await projector.stop()
        return waited, _version(db)

    waited, versions = asyncio.run(run())
    assert waited < 3.5  # settle (1 s) + debounce + a cycle, with room for a slow CI machine
    assert versions <= 3  # first image, perhaps one at max_delay, the end
    assert _pending_keys(db) == []


def test_the_row_skipped_after_a_failure_is_the_failing_one_not_a_held_studys(db: Database, monkeypatch) -> None:
    """A change that fails alone is skipped (the projector's last resort). The narrowed cycle that failed read
    the first pending row *not held*; the skip dropped the first pending row of all, a held study's, so the
    failing change stayed (and failed again) while the held study's rows were dropped one per retry, its
    last images then never shown, and the log named the wrong change."""
    import pytest

    from engine.domain.tables import patients
    from engine.fhir.projector import _cycle
    from engine.fhir.resources import patient

    clock = Clock()
    settling = StudySettling(settle=1.0, max_delay=10.0, clock=clock)
    study, one = db.writer.call(_study)
    settling.projected([str(study)])
    db.writer.call(lambda c: _add(c, study, one, 1))  # a held study's rows, first in the pending table
    db.writer.call(lambda c: c.execute(insert(patients).values(patient_id="P9", created_at=NOW, updated_at=NOW)))
    held_rows = [k for k in _pending_keys(db) if k[0] == "study"]
    assert held_rows

    def fails(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a resource that cannot be built")

    monkeypatch.setattr(patient, "build", fails)
    with pytest.raises(RuntimeError):
        _cycle(db, SETTINGS, 1, settling)  # narrowed to one row: the patient's (the study's are held)
    projector = Projector(db, SETTINGS, settling=settling)
    asyncio.run(projector._skip_failing())
    left = _pending_keys(db)
    assert [k for k in left if k[0] == "study"] == held_rows, "a held study's change was dropped"
    assert not [k for k in left if k[0] == "Patient"], "the failing change is still there"


def test_nothing_is_held_while_a_backlog_is_pending(db: Database, monkeypatch) -> None:
    """Finding what to hold scans the pending rows: with a backlog (the upgrade's backfill, a long outage)
    every cycle would pay for it, so then nothing is held and the batch is read as before."""
    from engine.fhir import settling as module

    monkeypatch.setattr(module, "MAX_PENDING_SPAN", 5)
    clock = Clock()
    settling = StudySettling(settle=5.0, max_delay=60.0, clock=clock)
    study, one = db.writer.call(_study)
    settling.projected([str(study)])
    db.writer.call(lambda c: _add(c, study, one, 1))  # 3 rows: within the span, the study is held
    assert db.read(lambda c: collect(c, SETTINGS, 1000, settling)).studies == frozenset()
    assert settling.holding == {str(study)}
    for n in (2, 3):  # 9 rows: a backlog
        db.writer.call(lambda c, n=n: _add(c, study, one, n))
    statements: list[str] = []
    from sqlalchemy import event

    event.listen(db.read_engine, "before_cursor_execute", lambda *args: statements.append(str(args[2])))
    projection = db.read(lambda c: collect(c, SETTINGS, 1000, settling))
    assert projection.studies == {str(study)} and settling.holding == frozenset()
    assert not any("GROUP BY" in s for s in statements)  # no scan for what to hold
