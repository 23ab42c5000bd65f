"""A coerced image on the wire, spliced: storescu sends corpus images of an ordered study (ASCII values, so the
header keeps its character set and is spliced); only the coerced elements and OriginalAttributesSequence differ
from what was received, everything else is byte for byte as sent, and dciodvfy finds nothing new."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from engine.archive.copy_tables import instance_copies
from engine.archive.part10 import dataset_offset
from engine.archive.structure import top_level_elements
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.instance_tables import instances
from engine.reconcile.rewrite import encoding_of
from tests.conftest import need
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
#: What the shipped order-to-image mapping writes into these images for the order below.
COERCED = {0x00100010, 0x00100020, 0x00100021, 0x00100030, 0x00100040, 0x00081030, 0x00200010, 0x00401001,
           0x00080050, 0x00321060, 0x00400275, 0x00081032, 0x04000561, 0x00080051}


def _elements(path: Path) -> dict[int, bytes]:
    data = path.read_bytes()
    offset = dataset_offset(data[:1 << 16])
    enc = encoding_of(str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID))
    assert enc is not None
    return {tag: data[start:stop] for tag, start, stop in top_level_elements(data, offset, len(data), enc)}


def _dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line.split(" - ", 1)[-1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


def _stored_as_received(tmp_path: Path, files: list[Path]) -> dict[str, Path]:
    """The files as this storescu sends them, stored by an engine without their order (as received)."""
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, files).returncode == 0
        out = {}
        for n, row in enumerate(scp.instances()):
            out[row.sop_instance_uid] = tmp_path / f"received{n}.dcm"
            shutil.copyfile(scp.archive / row.path, out[row.sop_instance_uid])
        return out


def test_a_spliced_image_differs_from_the_received_one_only_where_it_was_coerced(tmp_path: Path,
                                                                                 corpus: Path) -> None:
    need(shutil.which("dciodvfy") is not None, "dicom3tools (dciodvfy) not installed")
    files = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:4]
    as_received = _stored_as_received(tmp_path / "plain", files)
    with running_scp(tmp_path / "ordered", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", patient_name="DOE^JOHN", birth_date="19600101", sex="M"),
            order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR",
                  requested_procedure_description="MR LEFT WRIST"),
        ])  # fmt: skip
        done = storescu(scp.port, files)
        assert done.returncode == 0, done.stderr[-2000:]
        copies = scp.db.read(lambda c: c.execute(select(instances.c.sop_instance_uid, instance_copies.c.meta_sha256)
                                                 .join(instance_copies)).all())
        meta_sha256 = dict(copies)
        for uid, src in as_received.items():
            stored = scp.stored_path(uid)
            ds = dcmread(stored)
            assert (str(ds.PatientName), ds.StudyDescription) == ("DOE^JOHN", "MR LEFT WRIST")
            assert str(ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "DOE^J1"
            received, written = _elements(src), _elements(stored)
            untouched = {t for t in received if t not in COERCED and not (t & 0xFFFF == 0 and t >> 16 > 6)}
            assert {t: written[t] for t in untouched} == {t: received[t] for t in untouched}  # pixels included
            assert set(written) - untouched <= COERCED
            assert _dciodvfy_errors(stored) <= _dciodvfy_errors(src)
            data = stored.read_bytes()
            meta = data[:dataset_offset(data[:1 << 16])]  # padded when the spool was given its new head in place
            assert meta_sha256[uid] == hashlib.sha256(meta).hexdigest()  # what fixity and replication check
        again = storescu(scp.port, files[:2])  # resent: recognised as the same content, nothing changes
        assert again.returncode == 0 and len(scp.instances()) == len(files)
        assert all(r.versions == 1 for r in scp.instances())
