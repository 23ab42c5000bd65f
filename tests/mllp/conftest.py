from pathlib import Path

import pytest

from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for localhost and a client certificate (tests/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
