"""DICOM destinations in engine.yaml: validated loudly, each problem at its file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.plan import check_directory

ROOT = Path(__file__).resolve().parents[2]

PACS = """\
destinations:
  - name: pacs
    type: dicom
    host: 127.0.0.1
    port: 4242
    called_ae_title: PACS
"""


def _write(tmp: Path, engine: str) -> Path:
    (tmp / "channels").mkdir(parents=True, exist_ok=True)
    (tmp / "engine.yaml").write_text(f"mappings_dir: {ROOT / 'mappings'}\n" + textwrap.dedent(engine))
    return tmp


def _problems(tmp: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        check_directory(tmp, {})
    return exc.value.problems


def test_a_valid_dicom_destination_passes(tmp_path: Path) -> None:
    check_directory(_write(tmp_path, PACS), {})


def test_an_unknown_key_is_refused_at_its_line(tmp_path: Path) -> None:
    (found,) = _problems(_write(tmp_path, PACS + "    calling_aet: RB\n"))
    assert found == (f"{tmp_path / 'engine.yaml'}:8: destinations.0.calling_aet: unknown key 'calling_aet'"
                     " (did you mean 'calling_ae_title'?)")


def test_a_route_naming_a_calling_ae_the_listener_refuses_never_matches(tmp_path: Path) -> None:
    engine = "dicom:\n  accepted_calling_ae_titles: [CT1, MR1]\n" + PACS + (
        "    routes:\n      - calling_ae_titles: [CT2]\n        sop_classes: ['1.2.840.10008.5.1.4.1.1.2', 'CT']\n")
    found = _problems(_write(tmp_path, engine))
    assert found[0].startswith(f"{tmp_path / 'engine.yaml'}:11: destinations.0.routes.0.calling_ae_titles.0:"
                               " 'CT2' is not in dicom.accepted_calling_ae_titles")
    assert found[1] == (f"{tmp_path / 'engine.yaml'}:12: destinations.0.routes.0.sop_classes.1: 'CT' is not a"
                        " SOP Class UID")


def test_forwarding_without_receiving_images_is_refused(tmp_path: Path) -> None:
    (found,) = _problems(_write(tmp_path, "archive:\n  enabled: false\n" + PACS))
    assert "forwards stored images, but images are not received" in found


def test_the_mpps_status_cannot_go_to_a_dicom_destination(tmp_path: Path) -> None:
    (found,) = _problems(_write(tmp_path, "mpps:\n  status_destination: pacs\n" + PACS))
    assert "mpps.status_destination: 'pacs' is a DICOM destination" in found


def test_the_shipped_pacs_destination_is_off_without_a_host_and_on_with_one() -> None:
    off = load_config(ROOT / "config", env={})
    (pacs,) = [d for d in off.engine.destinations if d.name == "pacs"]
    assert pacs.type == "dicom" and pacs.host == ""
    on = load_config(ROOT / "config", env={"RADBRIDGE_PACS_HOST": "pacs.example", "RADBRIDGE_PACS_PORT": "4242",
                                            "RADBRIDGE_PACS_AET": "MAINPACS"})
    (pacs,) = [d for d in on.engine.destinations if d.name == "pacs"]
    assert (pacs.host, pacs.port, pacs.called_ae_title) == ("pacs.example", 4242, "MAINPACS")


def test_on_correction_hl7_needs_an_hl7_destination(tmp_path: Path) -> None:
    adt = "  - name: pacs-adt\n    type: mllp\n    host: 127.0.0.1\n    port: 2575\n"
    check_directory(_write(tmp_path, PACS + "    on_correction: hl7\n    correction_hl7_destination: pacs-adt\n"
                           + adt), {})
    (found,) = _problems(_write(tmp_path / "a", PACS + "    on_correction: hl7\n"))
    assert found == (f"{tmp_path / 'a' / 'engine.yaml'}:8: destinations.0.on_correction: hl7 needs"
                     " correction_hl7_destination (the mllp destination that gets the ADT)")
    (found,) = _problems(_write(tmp_path / "e", PACS + "    correction_hl7_destination: pacs\n"))
    assert found == (f"{tmp_path / 'e' / 'engine.yaml'}:8: destinations.0.correction_hl7_destination: used only"
                     " with on_correction: hl7 (now resend)")
    (found,) = _problems(_write(tmp_path / "b", PACS + "    on_correction: hl7\n"
                                "    correction_hl7_destination: pacs-adt\n"))
    assert found.startswith(f"{tmp_path / 'b' / 'engine.yaml'}:9: destinations.0.correction_hl7_destination:"
                            " no destination named 'pacs-adt'")
    (found,) = _problems(_write(tmp_path / "c", PACS + "    on_correction: hl7\n"
                                "    correction_hl7_destination: pacs\n"))
    assert "'pacs' is a DICOM destination; the correction ADT is HL7" in found
    (found,) = _problems(_write(tmp_path / "d", PACS + "    on_correction: always\n"))
    assert found.startswith(f"{tmp_path / 'd' / 'engine.yaml'}:8: destinations.0.on_correction:")
