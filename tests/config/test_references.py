"""Every name and file a configuration refers to is checked before anything runs, each at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.plan import check_directory

ROOT = Path(__file__).resolve().parents[2]


def channel(port: int = 2575, extra: str = "") -> str:
    return f"name: c1\nsource:\n  type: mllp\n  port: {port}\n{extra}"


def write(tmp: Path, body: str, engine: str = "", name: str = "c1") -> Path:
    (tmp / "channels").mkdir(parents=True, exist_ok=True)
    if "mappings_dir" not in engine:
        engine = f"mappings_dir: {ROOT / 'mappings'}\n{engine}"
    (tmp / "engine.yaml").write_text(f"dicom: {{enabled: false}}\n{engine}")
    (tmp / "channels" / f"{name}.yaml").write_text(body)
    return tmp


def problems(tmp: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        check_directory(tmp, {})
    return exc.value.problems


def test_the_shipped_configuration_passes_every_check():
    plan = check_directory(ROOT / "config", {})
    assert plan.handlers and all(plan.handlers.values())


def test_a_mistyped_handler_is_named_at_its_line_with_a_suggestion(tmp_path):
    write(tmp_path, channel(extra="handlers:\n  - patients\n  - ordrs\n"))
    assert problems(tmp_path) == [f"{tmp_path / 'channels' / 'c1.yaml'}:7: handlers.1: unknown handler 'ordrs'"
                                  " (did you mean 'orders'?)"]


def test_a_mistyped_mapping_is_named_with_a_suggestion(tmp_path):
    write(tmp_path, channel(extra="mapping: order-to-worklst\n"))
    assert problems(tmp_path) == [
        f"{tmp_path / 'channels' / 'c1.yaml'}:5: mapping: unknown mapping 'order-to-worklst' in"
        f" {ROOT / 'mappings'} (did you mean 'order-to-worklist'?)"
    ]


def test_each_mapping_of_a_list_is_checked(tmp_path):
    write(tmp_path, channel(extra="mapping:\n  - adt-to-patient\n  - nothing-like-it\n"))
    (found,) = problems(tmp_path)
    assert found.startswith(f"{tmp_path / 'channels' / 'c1.yaml'}:7: mapping.1: unknown mapping 'nothing-like-it'")
    assert "known: adt-to-patient, order-to-image, order-to-mwl, order-to-worklist" in found


def test_a_disabled_channel_is_checked_too(tmp_path):
    write(tmp_path, channel(extra="enabled: false\nhandlers: [patient]\n"))
    assert "handlers.0: unknown handler 'patient' (did you mean 'patients'?)" in problems(tmp_path)[0]


def test_a_missing_tls_file_is_named_at_its_line(tmp_path):
    write(tmp_path, channel(extra=f"  tls:\n    cert_file: {tmp_path}/no.pem\n    key_file: {tmp_path}/no.key\n"))
    path = tmp_path / "channels" / "c1.yaml"
    assert problems(tmp_path) == [f"{path}:6: source.tls.cert_file: file not found: {tmp_path}/no.pem",
                                  f"{path}:7: source.tls.key_file: file not found: {tmp_path}/no.key"]


def test_tls_files_that_are_not_pem_are_refused(tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    ca = ("destinations:\n  - name: d\n    type: mllp\n    host: h\n    port: 1\n"
          f"    tls:\n      ca_file: {tmp_path}/junk.pem\n")
    write(tmp_path, channel(extra=ca))
    (found,) = problems(tmp_path)
    path = tmp_path / "channels" / "c1.yaml"
    assert found.startswith(f"{path}:10: destinations.0.tls: TLS material cannot be loaded")


def test_a_missing_order_control_table_is_named(tmp_path):
    write(tmp_path, channel(), engine=f"orders:\n  order_control_table: {tmp_path}/none.csv\n")
    assert problems(tmp_path) == [f"{tmp_path / 'engine.yaml'}:4: orders.order_control_table: file not found:"
                                  f" {tmp_path}/none.csv"]


def test_a_handler_that_cannot_start_is_a_configuration_problem(tmp_path):
    (tmp_path / "control.csv").write_text("a,b\n1,2\n")
    engine = f"orders: {{order_control_table: {tmp_path}/control.csv}}\n"
    write(tmp_path, channel(extra="handlers: [orders]\n"), engine=engine)
    (found,) = problems(tmp_path)
    assert found.startswith(f"{tmp_path}/control.csv:1: need columns order_control, order_status, sps_status")


def test_an_invalid_mapping_file_is_reported_with_the_channel_problems(tmp_path):
    mappings = tmp_path / "maps"
    mappings.mkdir()
    (mappings / "m.yaml").write_text("this is: [not a mapping\n")
    write(tmp_path, channel(extra="mapping: m\nhandlers: [patiens]\n"), engine=f"mappings_dir: {mappings}\n")
    found = problems(tmp_path)
    assert len(found) == 2
    assert "handlers.0: unknown handler 'patiens' (did you mean 'patients'?)" in found[0]
    assert f"{mappings / 'm.yaml'}:" in found[1] and "invalid YAML" in found[1]


def test_problems_of_every_file_come_in_one_pass(tmp_path):
    write(tmp_path, channel(extra="source_port: 3\n"))
    write(tmp_path, channel(port=2580, extra="handlers: [ordrs]\n").replace("c1", "c2"), name="c2")
    found = problems(tmp_path)
    assert [p.split(": ")[1] for p in found] == ["source_port", "handlers.0"]
    assert "c1.yaml:5" in found[0] and "c2.yaml:5" in found[1]


def _reports(receivers: str, extra: str = "") -> str:
    return f"reports:\n{extra}  receivers:\n{receivers}"


def test_a_receiver_with_an_unknown_mapping_is_named_at_its_line(tmp_path):
    write(tmp_path, channel(), _reports("    - {name: ehr, mapping: report-to-oruu, mllp: 'ehr:2575'}\n"))
    (found,) = problems(tmp_path)
    assert found.startswith(f"{tmp_path / 'engine.yaml'}:5: reports.receivers.0.mapping: unknown mapping"
                            " 'report-to-oruu'") and "did you mean 'report-to-oru'?" in found


def test_a_receiver_naming_an_unknown_destination_is_refused(tmp_path):
    write(tmp_path, channel(), _reports("    - {name: ehr, destination: ehr-http}\n"))
    (found,) = problems(tmp_path)
    assert found.startswith(f"{tmp_path / 'engine.yaml'}:5: reports.receivers.0.destination: no destination"
                            " named 'ehr-http'")


def test_a_receiver_address_that_is_not_host_port_is_refused_at_load(tmp_path):
    write(tmp_path, channel(), _reports("    - {name: ehr, mllp: 'ehr.example.org'}\n"))
    (found,) = problems(tmp_path)
    assert "engine.yaml:5: reports.receivers.0.mllp" in found and "is not host:port" in found


def test_a_receiver_mapping_that_does_not_write_hl7_is_refused(tmp_path):
    write(tmp_path, channel(), _reports("    - {name: ehr, mapping: order-to-mwl, mllp: '127.0.0.1:2599'}\n"))
    (found,) = problems(tmp_path)
    assert "mapping order-to-mwl must read records and write hl7v2 (it reads record, writes dicom)" in found


def test_a_missing_report_status_table_is_named(tmp_path):
    write(tmp_path, channel(), "reports:\n  status_table: /nonexistent/report_status.csv\n")
    assert problems(tmp_path) == [f"{tmp_path / 'engine.yaml'}:4: reports.status_table: file not found:"
                                  " /nonexistent/report_status.csv"]


def test_a_receiver_and_a_destination_of_one_name_clash(tmp_path):
    write(tmp_path, channel(extra="destinations:\n  - {name: ehr, type: mllp, host: h, port: 1}\n"),
          _reports("    - {name: ehr, mllp: '127.0.0.1:2599'}\n"))
    (found,) = problems(tmp_path)
    assert "name 'ehr' is also used in" in found


def test_the_fhir_api_port_and_tls_files_are_checked(tmp_path):
    engine = (f"http:\n  enabled: true\n  port: 2575\n  tls:\n    cert_file: {tmp_path}/no.pem\n"
              f"    key_file: {tmp_path}/no.key\n")
    write(tmp_path, channel(), engine)
    found = problems(tmp_path)
    assert any(p.endswith("http.tls.cert_file: file not found: " + f"{tmp_path}/no.pem") for p in found), found
    assert any("2575 is already used by" in p for p in found), found


def test_an_invalid_engine_setting_does_not_make_the_channels_mappings_look_unknown(tmp_path, monkeypatch):
    # mappings_dir is valid: a mistake elsewhere in engine.yaml must not reset it to ./mappings
    monkeypatch.chdir(tmp_path)  # where ./mappings does not exist
    write(tmp_path, channel(extra="mapping: [adt-to-patient, order-to-worklst]\n"),
          engine="outbox:\n  poll_interval_seconds: fast\n")
    found = problems(tmp_path)
    assert len(found) == 2, found
    assert "outbox.poll_interval_seconds" in found[0]
    assert "unknown mapping 'order-to-worklst'" in found[1] and "did you mean 'order-to-worklist'" in found[1]


def test_an_unset_variable_in_engine_yaml_does_not_make_the_channels_mappings_look_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, channel(extra="mapping: [adt-to-patient]\n"), engine="identity:\n  facility: ${SITE_FACILITY}\n")
    assert problems(tmp_path) == [
        f"{tmp_path / 'engine.yaml'}:4: identity.facility: environment variable SITE_FACILITY is not set"
    ]


def test_an_unknown_time_zone_is_one_problem_at_its_line(tmp_path):
    write(tmp_path, channel(extra="mapping: [adt-to-patient, order-to-worklist]\n"), engine="timezone: Mars/Base\n")
    (found,) = problems(tmp_path)
    assert found.startswith(f"{tmp_path / 'engine.yaml'}:3: timezone:")
    assert "'Mars/Base' is not an IANA time zone" in found
