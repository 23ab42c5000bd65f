"""A Series Instance UID already filed under another study: never split across two studies (storescu,
pynetdicom). The image joins that study only when the study is what its own received Study Instance UID
was coerced to (a site mapping that coerces StudyInstanceUID to the order's); otherwise it is refused
0xC240 with an Error Comment and kept in quarantine."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.tables import series, studies
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import corpus_images, running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
STUDY_A, STUDY_B, STUDY_ORDER = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.9"


def _answer(port: int, path: Path) -> Dataset:
    """The C-STORE response of a pynetdicom association (Status, and ErrorComment when given)."""
    ds = dcmread(path)
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _rows(scp: object) -> tuple[list[str], list[tuple[str, str]]]:
    def read(conn: object) -> tuple[list[str], list[tuple[str, str]]]:
        uids = [r[0] for r in conn.execute(select(studies.c.study_instance_uid).order_by(studies.c.id))]  # type: ignore[attr-defined]
        filed = conn.execute(select(series.c.series_instance_uid, studies.c.study_instance_uid)  # type: ignore[attr-defined]
                             .join(studies, studies.c.id == series.c.study_pk)).all()
        return uids, [tuple(r) for r in filed]
    return scp.db.read(read)  # type: ignore[attr-defined,no-any-return]


def test_an_image_of_a_series_filed_under_another_study_is_refused_and_kept(tmp_path: Path, corpus: Path) -> None:
    """Before: the second image was indexed under a new study B while its series row stayed under study A
    (study B counted no series, the series' images were in two studies), success answered."""
    paths = corpus_images(corpus, tmp_path, {"StudyInstanceUID": STUDY_A}, {"StudyInstanceUID": STUDY_B})
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, paths[:1]).returncode == 0
        refused = storescu(scp.port, paths[1:])
        assert refused.returncode != 0
        answer = _answer(scp.port, paths[1])
        assert answer.Status == 0xC240
        assert answer.ErrorComment == "Series Instance UID already filed under another study"
        assert len(scp.instances()) == 1
        assert [q.status for q in scp.quarantined()] == [0xC240, 0xC240]
        assert "another study" in scp.quarantined()[0].reason
        series_uid = str(dcmread(paths[0]).SeriesInstanceUID)
        assert _rows(scp) == ([STUDY_A], [(series_uid, STUDY_A)])
        assert storescu(scp.port, paths[:1]).returncode == 0  # the association and the study go on as before


def test_a_series_filed_under_another_study_is_refused_with_reconciliation_off(tmp_path: Path,
                                                                              corpus: Path) -> None:
    paths = corpus_images(corpus, tmp_path, {"StudyInstanceUID": STUDY_A}, {"StudyInstanceUID": STUDY_B})
    with running_scp(tmp_path / "rb", reconcile={"enabled": False}) as scp:
        assert storescu(scp.port, paths[:1]).returncode == 0
        assert _answer(scp.port, paths[1]).Status == 0xC240
        assert len(scp.instances()) == 1 and [q.status for q in scp.quarantined()] == [0xC240]


def test_the_only_image_of_a_series_resent_under_a_corrected_study_takes_its_series_along(tmp_path: Path,
                                                                                       corpus: Path) -> None:
    """A modality that corrected the Study Instance UID of a one-image series and sent it again: no other
    image is split from it, so the series moves with it (a new version, as for a corrected series)."""
    (first,) = corpus_images(corpus, tmp_path, {"StudyInstanceUID": STUDY_A})
    (tmp_path / "again").mkdir()
    (second,) = corpus_images(corpus, tmp_path / "again", {"StudyInstanceUID": STUDY_B})
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, [first]).returncode == 0
        done = storescu(scp.port, [second])
        assert done.returncode == 0, done.stderr[-2000:]
        series_uid = str(dcmread(first).SeriesInstanceUID)
        assert _rows(scp)[1] == [(series_uid, STUDY_B)] and scp.quarantined() == []
        (row,) = scp.instances()
        assert row.versions == 2


def _coercing_mapping(tmp_path: Path) -> Path:
    """The shipped mappings, with the Study Instance UID coerced to the order's (a site's choice)."""
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    path = mappings / "order-to-image.yaml"
    text = path.read_text()
    marker = "      PatientName: {path: patient.patient_name, transform: [truncate]}\n"
    assert marker in text
    path.write_text(text.replace(marker, marker + "      StudyInstanceUID: order.study_instance_uid\n"))
    return mappings


def test_an_image_whose_study_uid_was_coerced_before_follows_the_coercion(tmp_path: Path, corpus: Path) -> None:
    """Unscheduled -> order with a site mapping that coerces StudyInstanceUID: the series' first image
    (matched by accession) was filed under the order's Study Instance UID. A later image of the series with
    the same received Study Instance UID but nothing that matches the order by itself (no accession) joins
    that study, coerced alike (its Study Instance UID, recorded in OriginalAttributesSequence); one with
    another received Study Instance UID is refused."""
    paths = corpus_images(corpus, tmp_path, {"StudyInstanceUID": STUDY_B}, {"StudyInstanceUID": STUDY_B,
                                                                      "AccessionNumber": None},
                    {"StudyInstanceUID": STUDY_A, "AccessionNumber": None})
    with running_scp(tmp_path / "rb", mappings_dir=_coercing_mapping(tmp_path)) as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", issuer="", patient_name="DOE^JOHN"),
            order("PL1", patient_id="583295", issuer="", accession_number="MOF5026", modality="MR",
                  study_instance_uid=STUDY_ORDER)])
        done = storescu(scp.port, paths[:2])
        assert done.returncode == 0, done.stderr[-2000:]
        series_uid = str(dcmread(paths[0]).SeriesInstanceUID)
        assert _rows(scp) == ([STUDY_ORDER], [(series_uid, STUDY_ORDER)])
        for path in paths[:2]:
            stored = dcmread(scp.stored_path(str(dcmread(path).SOPInstanceUID)))
            assert (stored.StudyInstanceUID, str(stored.PatientName)) == (STUDY_ORDER, "DOE^JOHN")
            previous = stored.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
            assert previous.StudyInstanceUID == STUDY_B
        assert _answer(scp.port, paths[2]).Status == 0xC240
        assert len(scp.instances()) == 2 and [q.status for q in scp.quarantined()] == [0xC240]


def test_two_associations_filing_one_series_under_two_studies_at_once(tmp_path: Path, corpus: Path) -> None:
    """Two senders at once, each image of series n under study A on one and study B on the other: one study
    gets each series, the other image is refused 0xC240 and kept in quarantine. The check before storing
    cannot see an image of the other association not yet committed: the index's own check refuses it then,
    after its file was placed. Such a refusal lost the image (its spool had become the placed file, which
    was removed): every refusal must be kept, and no file left in the archive unindexed."""
    import threading

    src = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    statuses: dict[int, list[int]] = {0: [], 1: []}

    def send(port: int, who: int) -> None:
        ae = AE(ae_title=f"CT{who}")
        ae.add_requested_context(src.SOPClassUID, src.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
        try:
            for n in range(15):
                ds = src.copy()
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.99.{who}.{n}"
                ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.98.{n}"
                ds.StudyInstanceUID = (STUDY_A, STUDY_B)[who]
                statuses[who].append(int(assoc.send_c_store(ds).Status))
        finally:
            assoc.release()

    with running_scp(tmp_path / "rb") as scp:
        senders = [threading.Thread(target=send, args=(scp.port, who)) for who in (0, 1)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(120)
        answered = statuses[0] + statuses[1]
        assert sorted(set(answered)) == [0, 0xC240] and answered.count(0) == 15
        series_rows = _rows(scp)[1]
        assert len(series_rows) == 15
        study_of = dict(series_rows)
        for row in scp.instances():
            assert study_of[row.path.split("/")[1]] == row.path.split("/")[0]
        assert len(scp.quarantined()) == answered.count(0xC240)
        archived = [p for p in scp.archive.rglob("*.dcm") if ".quarantine" not in p.parts]
        assert len(archived) == len(scp.instances()) == 15
