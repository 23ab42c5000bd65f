"""``studies list|show`` read the index: a study known only from MPPS shows (and is found by) its patient."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert

from engine.cli.studies import StudyFilter, list_studies, study_detail
from engine.domain.tables import patients, studies
from engine.store.database import Database

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _seed(conn) -> None:
    pk = conn.execute(insert(patients).values(patient_id="EX100234", patient_name="EXAMPLE^ALVA",
                                              created_at=NOW, updated_at=NOW)).inserted_primary_key[0]
    conn.execute(insert(studies).values(study_instance_uid="1.2.3.1", patient_pk=pk, first_seen_at=NOW,
                                        last_seen_at=NOW))  # from MPPS: no header values
    conn.execute(insert(studies).values(study_instance_uid="1.2.3.2", patient_pk=pk, patient_id="TEMP7",
                                        patient_name="TRAUMA^ONE", first_seen_at=NOW, last_seen_at=NOW))
    conn.execute(insert(studies).values(study_instance_uid="1.2.3.3", patient_id="OTHER", first_seen_at=NOW,
                                        last_seen_at=NOW))  # unscheduled, no patient


def test_a_study_without_header_values_shows_its_patient_and_is_found_by_the_patients_id(db: Database) -> None:
    db.writer.call(_seed)
    listed = db.read(lambda c: list_studies(c, StudyFilter()))
    shown = {r["study_instance_uid"]: (r["patient_id"], r["patient_name"]) for r in listed}
    assert shown == {"1.2.3.1": ("EX100234", "EXAMPLE^ALVA"), "1.2.3.2": ("TEMP7", "TRAUMA^ONE"),
                     "1.2.3.3": ("OTHER", "")}
    by_patient = db.read(lambda c: list_studies(c, StudyFilter(patient_id="EX100234")))
    assert sorted(r["study_instance_uid"] for r in by_patient) == ["1.2.3.1", "1.2.3.2"]
    assert [r["study_instance_uid"] for r in db.read(lambda c: list_studies(c, StudyFilter(patient_id="OTHER")))] \
        == ["1.2.3.3"]
    detail = db.read(lambda c: study_detail(c, "1.2.3.1"))
    assert detail is not None and detail["patient_id"] == "EX100234"
