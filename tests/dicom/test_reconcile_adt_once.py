"""``on_correction: hl7`` (#13): an A47 upstream is an A47 to the PACS, and a correction's ADT is queued once
per correction event, across batches, job runs and a crash between them.

DCMTK storescu stores the images; the handlers apply the ADT as the channel would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.archive.location import ArchiveLocation
from engine.archive.rewriting import RewriteIO
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.late_reconcile import Pace, reconcile_job
from engine.domain.reconcile_tables import correction_adts, reconcile_requests
from engine.domain.reconciler import Reconciler
from engine.domain.reforward import CorrectionPolicy
from engine.store.schema import outbox
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import StoreSCP, running_scp, storescu
from tests.domain.factories import apply_records, merge, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ADT = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^{event}|A{event}|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
COUNT = 4


class _Crash(BaseException):
    """The process dying here: nothing after it runs."""


def _scp(tmp_path: Path) -> Any:
    mllp = {"type": "mllp", "name": "pacs-adt", "host": "127.0.0.1", "port": 2999}
    pacs = {"type": "dicom", "name": "pacs", "host": "127.0.0.1", "port": 104, "called_ae_title": "PACS",
            "on_correction": "hl7", "correction_hl7_destination": "pacs-adt"}
    return running_scp(tmp_path, mappings_dir=ROOT / "mappings", destinations=[mllp, pacs])


def _stored(scp: StoreSCP, corpus: Path) -> None:
    apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
        patient("583295", patient_name="DOE^JOHN"),
        order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
    files = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:COUNT]
    assert storescu(scp.port, files).returncode == 0


def _adt(scp: StoreSCP, event: str, records: list[dict[str, Any]]) -> None:
    apply_records(scp.db, PatientsHandler(patient_policy(scp.config)), records, ADT.format(event=event))


def _adts(scp: StoreSCP) -> list[Any]:
    query = select(outbox).where(outbox.c.destination == "pacs-adt").order_by(outbox.c.id)
    return scp.db.read(lambda c: c.execute(query).all())


def _job(scp: StoreSCP, pace: Pace) -> Any:
    io = RewriteIO.local(ArchiveLocation("primary", scp.config.archive_dir()))
    return reconcile_job(scp.db, io, Reconciler.from_config(scp.db, scp.config), 1.0,
                         CorrectionPolicy.from_config(scp.config), pace)


def test_an_a47_upstream_reaches_the_pacs_as_an_a47(tmp_path: Path, corpus: Path) -> None:
    with _scp(tmp_path) as scp:
        _stored(scp, corpus)
        _adt(scp, "A47", [merge("NEW9", "583295", kind="change_id"),
                          patient("NEW9", patient_name="DOE^JOHN", event="A47")])
        assert _job(scp, Pace()).run() == COUNT
        (row,) = _adts(scp)
        segments = row.payload.decode().split("\r")
        assert segments[0].split("|")[8] == "ADT^A47^ADT_A30"
        assert segments[2].startswith("PID|1||NEW9^^^HOSP||DOE^JOHN||")
        assert segments[3] == "MRG|583295^^^HOSP"


def test_a_correction_interrupted_between_batches_queues_its_adt_once(tmp_path: Path, corpus: Path) -> None:
    with _scp(tmp_path) as scp:
        _stored(scp, corpus)
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", event="A08")])

        def die(_seconds: float) -> None:
            raise _Crash

        with pytest.raises(_Crash):  # after the first batch was indexed (and its ADT queued)
            _job(scp, Pace(batch=1, yield_ratio=1.0, sleep=die)).run()
        assert sorted(r.versions for r in scp.instances()) == [1] * (COUNT - 1) + [2]
        assert len(_adts(scp)) == 1
        assert _job(scp, Pace(batch=1, yield_ratio=0.0)).run() == COUNT - 1  # the restart finishes it
        assert {r.versions for r in scp.instances()} == {2}
        (row,) = _adts(scp)
        assert "|ADT^A08^ADT_A01|" in row.payload.decode()
        assert scp.db.read(lambda c: c.execute(select(reconcile_requests)).all()) == []
        assert scp.db.read(lambda c: c.execute(select(correction_adts)).all()) == []  # gone with the request


def test_two_corrections_of_the_same_patient_each_send_their_own_adt(tmp_path: Path, corpus: Path) -> None:
    with _scp(tmp_path) as scp:
        _stored(scp, corpus)
        for n, name in enumerate(("DOE^JONATHAN", "DOE^JOHN", "DOE^JONATHAN")):
            _adt(scp, "A08", [patient("583295", patient_name=name, event="A08")])
            assert _job(scp, Pace()).run() == COUNT, n
        first, second, third = (row.payload.decode().split("\r")[0].split("|")[9] for row in _adts(scp))
        assert len({first, second, third}) == 3  # the same content again is another event: another MSH-10
