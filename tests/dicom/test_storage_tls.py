"""C-STORE over mutual TLS (PS3.15 B.1) with DCMTK storescu: stored with a certificate, refused without."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import pixel_data, running_scp, storescu
from tests.pki import make_pki

pytestmark = needs_dcmtk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    make_pki(root)
    return root


def test_storescu_stores_over_mutual_tls_and_is_refused_without_a_certificate(
    tmp_path: Path, pki: Path, corpus: Path
) -> None:
    src = corpus / "dicom" / "single" / "CT_small.dcm"
    tls = {"cert_file": pki / "server.pem", "key_file": pki / "server.key", "ca_file": pki / "ca.pem",
           "require_client_cert": True}  # fmt: skip
    with running_scp(tmp_path, dicom={"port": 0, "ae_title": "RADBRIDGE", "tls": tls}) as scp:
        anonymous = storescu(scp.port, [src], "+tla", "+cf", str(pki / "ca.pem"), "-to", "10")
        assert anonymous.returncode != 0 and scp.instances() == []
        with_cert = storescu(scp.port, [src], "+tls", str(pki / "client.key"), str(pki / "client.pem"),
                             "+cf", str(pki / "ca.pem"))
        assert with_cert.returncode == 0, with_cert.stderr[-2000:]
        (row,) = scp.instances()
        assert pixel_data(scp.archive / row.path) == pixel_data(src)
