"""Later images of a stored study whose identity reads differently: an empty Patient ID, the same Patient ID
in another character set, a Series Instance UID already filed under another study (DCMTK storescu)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import corpus_images, running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ADT = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^A08|A1|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"


@pytest.mark.parametrize("absent", [True, False], ids=["no PatientID", "empty PatientID"])
@pytest.mark.parametrize("known", ["unknown patient", "ADT patient", "order"])
def test_a_later_image_without_a_patient_id_joins_its_study(tmp_path: Path, corpus: Path, absent: bool,
                                                            known: str) -> None:
    """The second image of a stored study has no Patient ID (a workstation's secondary capture, a modality
    that lost it): it was refused 0xC230 as another patient's when the study was unscheduled. It names no
    other patient: it is filed under the study and, where the study's patient is known (an ADT, an order),
    given that patient's identity, the empty value recorded in OriginalAttributesSequence."""
    paths = corpus_images(corpus, tmp_path, {}, {"PatientID": None if absent else ""})
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        if known == "ADT patient":
            apply_records(scp.db, PatientsHandler(patient_policy(scp.config)),
                          [patient("583295", issuer="", patient_name="DOE^JOHN", event="A08")], ADT)
        if known == "order":
            apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
                patient("583295", issuer="", patient_name="DOE^JOHN"),
                order("PL1", patient_id="583295", issuer="", accession_number="MOF5026", modality="MR")])
        done = storescu(scp.port, paths)
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(scp.instances()) == 2 and scp.quarantined() == []
        assert len({r.study_pk for r in scp.instances()}) == 1
        stored = dcmread(scp.stored_path(str(dcmread(paths[1]).SOPInstanceUID)))
        if known == "unknown patient":  # nothing to give it: stored as received
            assert stored.get("PatientID", "") == "" and "OriginalAttributesSequence" not in stored
            return
        assert (stored.PatientID, str(stored.PatientName)) == ("583295", "DOE^JOHN")
        previous = stored.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
        assert previous.PatientID in ("", None)


@pytest.mark.parametrize("order_known", [False, True], ids=["unscheduled", "ordered"])
def test_the_same_patient_id_in_utf8_and_latin1_is_one_patient(tmp_path: Path, corpus: Path,
                                                               order_known: bool) -> None:
    """One Patient ID in an ISO_IR 192 image and an ISO_IR 100 image of one study (a non-ASCII letter, and
    plain ASCII), each character set first: compared decoded, they are the same patient."""
    for pid, utf8_first in (("MÜLLER7", True), ("MÜLLER7", False), ("PLAIN7", True), ("PLAIN7", False)):
        charsets = ("ISO_IR 192", "ISO_IR 100") if utf8_first else ("ISO_IR 100", "ISO_IR 192")
        paths = corpus_images(corpus, tmp_path, *({"SpecificCharacterSet": c, "PatientID": pid} for c in charsets))
        with running_scp(tmp_path / f"{pid}{utf8_first}", mappings_dir=ROOT / "mappings") as scp:
            if order_known:
                apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
                    patient(pid, issuer="", patient_name="MÜLLER^ANNA"),
                    order("PL1", patient_id=pid, issuer="", accession_number="MOF5026", modality="MR")])
            done = storescu(scp.port, paths)
            assert done.returncode == 0, (pid, utf8_first, done.stderr[-2000:])
            assert len(scp.instances()) == 2 and scp.quarantined() == []
