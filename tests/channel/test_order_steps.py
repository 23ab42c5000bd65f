"""OMI^O23 with several IPCs (RAD TF-2 4.4.4): one order, one step per IPC, through the channel with the
shipped mapping and handlers, on SQLite and PostgreSQL."""

from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select, update

from engine.cli.orders import _text, audited_orders
from engine.domain.mpps import _steps_for
from engine.domain.reconcile import MatchKeys, MatchPolicy, find_order
from engine.domain.tables import orders, procedure_steps, step_station_aes
from engine.domain.worklist import MatchSettings, build_select
from engine.hl7.er7 import Message
from engine.store.schema import audit_events

from .test_nothing_dropped import _last, _runner, _send

MSH = "MSH|^~\\&|RIS|NORTHSIDE|RADBRIDGE|NORTHSIDE|20240312101500||OMI^O23^OMI_O23|{cid}|P|2.5.1\r"
PID = "PID|1||MRN6300^^^NORTHSIDE^MR||Okafor^Ada||19700101|F\r"


def _omi(cid: str, control: str, *ipcs: str, placer: str = "PLC-S1", status: str = "SC") -> str:
    """One ORC group (placer ``placer``) for a CT+MR chest procedure, with ``ipcs`` (IPC-4 onwards each)."""
    return (MSH.format(cid=cid) + PID + f"ORC|{control}|{placer}|FIL-{placer}||{status}\r"
            "TQ1|||||||20240313090000||R\r"
            f"OBR||{placer}|FIL-{placer}|CHEST^Chest imaging^L\r"
            + "".join(f"IPC|ACC-S1^NORTHSIDE|RP-S1|1.2.826.0.1.3680043.10.999.61|{ipc}\r" for ipc in ipcs))


CT = "SPS-CT|CT|P-CT^CT chest protocol^L|CT Room 2|Building B|CT2_AE"
MR = "SPS-MR|MR|P-MR^MR chest protocol^L|MR Room 1|Building C|MR1_AE~MR1_BACKUP"


def _steps(db: Any) -> list[tuple[str, ...]]:
    s = procedure_steps.c
    query = select(s.sps_id, s.modality, s.status, s.scheduled_station_ae_title, s.protocol_code_value).order_by(s.id)
    return [tuple(r) for r in db.read(lambda c: c.execute(query).all())]


def _orders(db: Any) -> list[tuple[str, ...]]:
    o = orders.c
    query = select(o.accession_number, o.requested_procedure_id, o.study_instance_uid).order_by(o.id)
    return [tuple(r) for r in db.read(lambda c: c.execute(query).all())]


def _ack(ack: Message) -> tuple[str, ...]:
    err = ack.segment("ERR")
    where = (err.value(2, 1, 1), err.value(2, 1, 2), err.value(2, 1, 3), err.value(3)) if err else ()
    return (ack.segment("MSA").value(1), *where)


def test_two_ipcs_under_one_orc_are_one_order_with_two_steps(db) -> None:
    ack = _send(_runner(db), _omi("S1", "NW", CT, MR))

    assert _ack(ack) == ("AA",)
    assert _orders(db) == [("ACC-S1", "RP-S1", "1.2.826.0.1.3680043.10.999.61")]
    assert _steps(db) == [("SPS-CT", "CT", "SCHEDULED", "CT2_AE", "P-CT"),
                          ("SPS-MR", "MR", "SCHEDULED", "MR1_AE\\MR1_BACKUP", "P-MR")]
    stations = db.read(lambda c: sorted(c.execute(select(step_station_aes.c.ae_title)).scalars()))
    assert stations == ["CT2_AE", "MR1_AE", "MR1_BACKUP"]
    detail = _last(db)
    assert detail["status"] == "PROCESSED"
    assert ("order placer PLC-S1, filler FIL-PLC-S1: requested procedure RP-S1 scheduled as 2 steps: SPS-CT CT, "
            "SPS-MR MR") in detail["note"]


def test_orders_show_lists_the_order_with_its_steps_and_is_audited(db) -> None:
    _send(_runner(db), _omi("S1", "NW", CT, MR))

    details = audited_orders(db, "ACC-S1")

    assert [(d["accession_number"], [s["sps_id"] for s in d["steps"]]) for d in details] == [
        ("ACC-S1", ["SPS-CT", "SPS-MR"])]
    text = _text(details)
    assert "2 step(s):" in text and "SPS-MR SCHEDULED MR at MR1_AE\\MR1_BACKUP (MR Room 1)" in text
    events = db.read(lambda c: c.execute(select(audit_events.c.action, audit_events.c.object_id)).all())
    assert ("order.show", "ACC-S1") in [tuple(e) for e in events]


def test_the_worklist_answers_one_item_per_step_with_the_orders_accession(db) -> None:
    _send(_runner(db), _omi("S1", "NW", CT, MR))
    query = Dataset()
    query.AccessionNumber = ""
    query.StudyInstanceUID = ""
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    item.Modality = ""
    query.ScheduledProcedureStepSequence = [item]
    dialect = "sqlite" if db.is_sqlite else "postgresql"
    rows = db.read(lambda c: c.execute(build_select(query, MatchSettings(dialect=dialect))).mappings().all())
    got = sorted((r["AccessionNumber"], r["StudyInstanceUID"], r["ScheduledProcedureStepID"], r["Modality"])
                 for r in rows)
    uid = "1.2.826.0.1.3680043.10.999.61"
    assert got == [("ACC-S1", uid, "SPS-CT", "CT"), ("ACC-S1", uid, "SPS-MR", "MR")]


def test_two_ipcs_without_sps_ids_get_distinct_ids_and_a_resend_finds_them(db) -> None:
    runner = _runner(db)
    text = _omi("S1", "NW", "|CT", "|MR")
    assert _ack(_send(runner, text)) == ("AA",)
    assert [s[:2] for s in _steps(db)] == [("RP-S1", "CT"), ("RP-S1.2", "MR")]

    assert _ack(_send(runner, text.replace("|S1|", "|S1B|"))) == ("AA",)
    assert [s[:3] for s in _steps(db)] == [("RP-S1", "CT", "SCHEDULED"), ("RP-S1.2", "MR", "SCHEDULED")]
    assert _last(db)["status"] == "UNCHANGED"


def test_two_ipcs_with_one_sps_id_are_ae_205_at_the_second_ipc_and_nothing_is_stored(db) -> None:
    runner = _runner(db)
    first_group = "ORC|NW|PLC-S0|FIL-S0||SC\rOBR||PLC-S0|FIL-S0|CHEST^Chest^L\rIPC|ACC-S0|RP-S0|1.2.3.4|S0|CT\r"
    text = _omi("S1", "NW", CT, CT.replace("|CT|", "|MR|"))
    text = text.replace("ORC|NW|PLC-S1", first_group + "ORC|NW|PLC-S1")

    assert _ack(_send(runner, text)) == ("AE", "IPC", "3", "4", "205")
    assert _steps(db) == [] and _orders(db) == []


def test_a_long_sps_id_in_the_second_ipc_is_ae_102_at_that_ipc(db) -> None:
    ack = _send(_runner(db), _omi("S1", "NW", CT, "S" * 65 + "|MR"))
    assert _ack(ack) == ("AE", "IPC", "2", "4", "102")
    assert _steps(db) == []


def test_an_xo_that_no_longer_lists_a_step_not_started_discontinues_it(db) -> None:
    runner = _runner(db)
    _send(runner, _omi("S1", "NW", CT, MR))

    ack = _send(runner, _omi("S2", "XO", CT.replace("CT2_AE", "CT3_AE")))

    assert _ack(ack) == ("AA",)
    assert _steps(db) == [("SPS-CT", "CT", "SCHEDULED", "CT3_AE", "P-CT"),
                          ("SPS-MR", "MR", "DISCONTINUED", "MR1_AE\\MR1_BACKUP", "P-MR")]
    assert "XO no longer lists step SPS-MR: DISCONTINUED" in _last(db)["note"]
    assert len(_orders(db)) == 1


def test_an_xo_keeps_a_started_step_it_no_longer_lists_and_adds_a_new_one(db) -> None:
    runner = _runner(db)
    _send(runner, _omi("S1", "NW", CT, MR))
    db.writer.call(lambda c: c.execute(update(procedure_steps).where(procedure_steps.c.sps_id == "SPS-MR")
                                       .values(status="STARTED")))

    _send(runner, _omi("S2", "XO", CT, "SPS-DX|DX"))

    assert [s[:3] for s in _steps(db)] == [("SPS-CT", "CT", "SCHEDULED"), ("SPS-MR", "MR", "STARTED"),
                                           ("SPS-DX", "DX", "SCHEDULED")]
    note = _last(db)["note"]
    assert "XO no longer lists step SPS-MR: kept STARTED" in note and "step SPS-DX added" in note
    assert len(_orders(db)) == 1


def test_a_cancel_cancels_every_step_of_the_order(db) -> None:
    runner = _runner(db)
    _send(runner, _omi("S1", "NW", CT, MR))

    ack = _send(runner, _omi("S2", "CA", CT, MR, status="CA"))

    assert _ack(ack) == ("AA",)
    assert [s[2] for s in _steps(db)] == ["CANCELED", "CANCELED"]


def test_a_cancel_with_only_orc_and_obr_cancels_every_step(db) -> None:
    runner = _runner(db)
    _send(runner, _omi("S1", "NW", CT, MR))

    assert _ack(_send(runner, _omi("S2", "CA", status="CA"))) == ("AA",)
    assert [s[2] for s in _steps(db)] == ["CANCELED", "CANCELED"]


def test_mpps_and_images_by_sps_id_pick_their_own_step(db) -> None:
    _send(_runner(db), _omi("S1", "NW", CT, MR))
    pks = {s: pk for pk, s in db.read(lambda c: c.execute(select(procedure_steps.c.id, procedure_steps.c.sps_id))
                                      .all())}
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS-MR"
    item.AccessionNumber = "ACC-S1"
    item.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.61"
    assert db.read(lambda c: _steps_for(c, item)) == [pks["SPS-MR"]]

    from datetime import UTC, datetime
    keys = MatchKeys(sps_ids=("SPS-MR",), study_instance_uid="1.2.826.0.1.3680043.10.999.61")
    found = db.read(lambda c: find_order(c, keys, datetime.now(UTC), MatchPolicy()))
    assert found is not None and (found.step_pk, found.matched_by) == (pks["SPS-MR"], "sps_id")


def test_a_second_obr_under_one_orc_of_an_omi_is_still_ae_100(db) -> None:
    text = _omi("S1", "NW", CT).replace("IPC|", "OBR||PLC-S1|FIL-PLC-S1|NECK^Neck^L\rIPC|", 1)
    assert _ack(_send(_runner(db), text)) == ("AE", "OBR", "2", "", "100")
    assert _steps(db) == []


def test_an_image_without_sps_id_goes_to_the_step_of_its_modality(db) -> None:
    """CT and MR steps of one procedure share its Study Instance UID: an MR image names no SPS ID, so the
    Study UID finds the order and its modality the MR step (not the first open step, the CT's)."""
    from datetime import UTC, datetime

    _send(_runner(db), _omi("S1", "NW", CT, MR))
    pks = {s: pk for pk, s in db.read(lambda c: c.execute(select(procedure_steps.c.id, procedure_steps.c.sps_id))
                                      .all())}
    uid = "1.2.826.0.1.3680043.10.999.61"
    image = Dataset()
    image.StudyInstanceUID, image.Modality, image.AccessionNumber, image.PatientID = uid, "MR", "ACC-S1", "MRN6300"
    now = datetime.now(UTC)
    found = db.read(lambda c: find_order(c, MatchKeys.from_dataset(image), now, MatchPolicy()))
    assert found is not None and (found.step_pk, found.matched_by) == (pks["SPS-MR"], "study_instance_uid")
    image.Modality = "US"  # no step of its modality: the order's first open step
    found = db.read(lambda c: find_order(c, MatchKeys.from_dataset(image), now, MatchPolicy()))
    assert found is not None and found.step_pk == pks["SPS-CT"]


def test_an_xo_without_ipc_keeps_the_step_fields_of_an_order_of_several_steps(db) -> None:
    """An XO with only ORC/OBR (an ORM-style change) names none of the steps: its OBR modality is not the CT's
    nor the MR's, so the order's fields change and each step keeps its own."""
    runner = _runner(db)
    _send(runner, _omi("S1", "NW", CT, MR))

    xo = _omi("S2", "XO").replace("CHEST^Chest imaging^L", "CHEST^Chest imaging, both^L" + "|" * 20 + "CT")
    assert _ack(_send(runner, xo)) == ("AA",)

    assert _steps(db) == [("SPS-CT", "CT", "SCHEDULED", "CT2_AE", "P-CT"),
                          ("SPS-MR", "MR", "SCHEDULED", "MR1_AE\\MR1_BACKUP", "P-MR")]
    descriptions = db.read(lambda c: list(c.execute(select(orders.c.requested_procedure_description)).scalars()))
    assert descriptions == ["Chest imaging, both"]
    assert "XO without IPC names none of the order's steps" in _last(db)["note"]


def test_a_report_for_the_procedure_matches_its_one_order(db) -> None:
    """The ORU names the procedure by placer number (and accession): one order, whatever its steps (the order per
    IPC of f88f17e made it AE 204 'matches 2 orders')."""
    from engine.domain.records import ReportRecord
    from engine.domain.reports import _find_order

    _send(_runner(db), _omi("S1", "NW", CT, MR))
    order_pks = db.read(lambda c: list(c.execute(select(orders.c.id)).scalars()))
    for report in (ReportRecord(status="F", placer_order_number="PLC-S1"),
                   ReportRecord(status="F", accession_number="ACC-S1"),
                   ReportRecord(status="F", study_instance_uid="1.2.826.0.1.3680043.10.999.61")):
        assert db.read(lambda c, r=report: _find_order(c, r, 1)) == order_pks[0]
    assert len(order_pks) == 1


def test_a_17_character_sps_id_of_the_second_ipc_is_kept_whole_and_said_at_that_ipc(db) -> None:
    assert _ack(_send(_runner(db), _omi("S1", "NW", CT, "SPS-MR-0123456789|MR"))) == ("AA",)
    assert [s[0] for s in _steps(db)] == ["SPS-CT", "SPS-MR-0123456789"]
    assert ("IPC 2: Scheduled Procedure Step ID (IPC-4/OBR-20) is 17 characters, longer than a DICOM SH (16): "
            "kept whole") in _last(db)["note"]
