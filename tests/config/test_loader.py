from pathlib import Path

import pytest

from engine.config import load_config
from engine.config.loader import load_yaml, substitute
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

CHANNEL = """name: c1
source:
  type: mllp
  port: ${PORT:-2575}
"""


def write(tmp: Path, channel: str, engine: str = "") -> Path:
    (tmp / "channels").mkdir(parents=True, exist_ok=True)
    (tmp / "engine.yaml").write_text(engine)
    (tmp / "channels" / "c1.yaml").write_text(channel)
    return tmp


def problems(tmp: Path, channel: str, env=None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp, channel), env or {})
    return exc.value.problems


def test_substitution_with_and_without_default():
    missing: list[str] = []
    assert substitute("${A}-${B:-x}", {"A": "1"}, missing) == "1-x"
    assert substitute("${C}", {}, missing) == "" and missing == ["C"]


def _channel(cfg, name):
    return next(c for c in cfg.channels if c.name == name)


def test_shipped_configuration_is_valid():
    cfg = load_config(ROOT / "config", {})
    assert _channel(cfg, "ris-inbound").source.port == 2575
    assert cfg.engine.dicom.ae_title == "RADBRIDGE" and cfg.engine.http.port == 8080


def test_environment_overrides_the_shipped_defaults():
    env = {"RADBRIDGE_MLLP_PORT": "3000", "RADBRIDGE_DICOM_AET": "RB2", "RADBRIDGE_DATABASE_URL": "sqlite:///x.db"}
    cfg = load_config(ROOT / "config", env)
    assert _channel(cfg, "ris-inbound").source.port == 3000
    assert cfg.engine.dicom.ae_title == "RB2" and cfg.engine.database_url() == "sqlite:///x.db"


def test_shipped_reports_channel_listens_on_2576_and_sends_nothing_without_an_ehr():
    cfg = load_config(ROOT / "config", {})
    assert _channel(cfg, "reports-inbound").source.port == 2576
    assert [r.enabled for r in cfg.engine.reports.receivers] == [False]
    assert cfg.engine.reports.receivers[0].mllp_destination() is None


def test_shipped_reports_settings_read_the_environment():
    env = {"RADBRIDGE_REPORTS_MLLP_PORT": "3001", "RADBRIDGE_EHR_MLLP": "ehr.example.org:6661"}
    cfg = load_config(ROOT / "config", env)
    assert _channel(cfg, "reports-inbound").source.port == 3001
    dest = cfg.engine.reports.receivers[0].mllp_destination()
    assert dest is not None and (dest.name, dest.host, dest.port) == ("ehr", "ehr.example.org", 6661)


def test_port_is_an_int(tmp_path):
    cfg = load_config(write(tmp_path, CHANNEL), {"PORT": "2600"})
    assert cfg.channels[0].source.port == 2600


def test_unknown_key_names_file_line_and_field(tmp_path):
    found = problems(tmp_path, CHANNEL + "  colour: blue\n")
    assert len(found) == 1
    assert "c1.yaml:5: source.mllp.colour" in found[0] or "c1.yaml:5: source.colour" in found[0]


def test_wrong_type_names_the_line(tmp_path):
    found = problems(tmp_path, CHANNEL.replace("${PORT:-2575}", "not-a-port"))
    assert "c1.yaml:4: source" in found[0] and "port" in found[0]


def test_missing_environment_variable_is_an_error(tmp_path):
    found = problems(tmp_path, CHANNEL.replace("${PORT:-2575}", "${NOPE}"))
    assert "c1.yaml:4" in found[0] and "NOPE" in found[0]


def test_invalid_yaml_reports_the_line(tmp_path):
    found = problems(tmp_path, "name: c1\nsource: [\n")
    assert "c1.yaml:" in found[0] and "invalid YAML" in found[0]


def test_duplicate_ports_are_rejected(tmp_path):
    write(tmp_path, CHANNEL)
    (tmp_path / "channels" / "c2.yaml").write_text(CHANNEL.replace("c1", "c2"))
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, {})
    assert "already used" in exc.value.problems[0]


def test_destination_type_is_checked(tmp_path):
    found = problems(tmp_path, CHANNEL + "destinations:\n  - name: d\n    type: carrier-pigeon\n")
    assert "c1.yaml:6" in found[0]


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, "name: 'bad name!'\nsource:\n  type: mllp\n  port: 99999\n")
    assert len(found) == 2


def test_a_lease_shorter_than_a_destination_timeout_is_refused(tmp_path):
    dest = "destinations:\n  - {name: ris, type: mllp, host: 127.0.0.1, port: 2576, timeout_seconds: 30}\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL + dest, "outbox: {lease_seconds: 40}\n"), {})
    assert exc.value.problems == [
        f"{tmp_path / 'channels' / 'c1.yaml'}:6: destinations.0.timeout_seconds: 'ris' timeout_seconds 30 needs"
        " outbox.lease_seconds of at least 41 (now 40)"
    ]
    assert load_config(write(tmp_path, CHANNEL + dest, "outbox: {lease_seconds: 41}\n"), {}).channels


def test_an_unknown_key_with_a_block_value_is_reported_at_the_key(tmp_path):
    found = problems(tmp_path, CHANNEL + "  colour:\n    shade: blue\n")
    assert len(found) == 1 and ":5: source.colour: unknown key 'colour'" in found[0]


def test_a_missing_key_is_reported_at_the_line_of_its_parent_key(tmp_path):
    found = problems(tmp_path, "name: c1\nsource:\n  type: mllp\n")
    assert found == [f"{tmp_path / 'channels' / 'c1.yaml'}:2: source.port: Field required"]


def test_an_unknown_key_gets_a_did_you_mean(tmp_path):
    found = problems(tmp_path, CHANNEL + "accept:\n  structur: strict\n")
    assert found == [f"{tmp_path / 'channels' / 'c1.yaml'}:6: accept.structur:"
                     " unknown key 'structur' (did you mean 'structure'?)"]


def test_an_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path):
    found = problems(tmp_path, "name: c1\nzzz: 1\nsource: {type: mllp, port: 1}\n")
    assert "c1.yaml:2: zzz: unknown key 'zzz' (known: accept, description," in found[0]


def test_a_destination_problem_names_the_key_in_the_file_not_the_union_tag(tmp_path):
    dest = "destinations:\n  - name: d\n    type: mllp\n    host: h\n    port: 1\n    prot: 2\n"
    found = problems(tmp_path, CHANNEL + dest)
    assert found == [f"{tmp_path / 'channels' / 'c1.yaml'}:10: destinations.0.prot:"
                     " unknown key 'prot' (did you mean 'port'?)"]


def test_a_channel_on_the_dicom_port_is_refused(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL, "dicom:\n  port: 2575\n"), {})
    assert exc.value.problems == [f"{tmp_path / 'channels' / 'c1.yaml'}:4: source.port: 2575 is already"
                                  " used by the DICOM listener"
                                  f" ({tmp_path / 'engine.yaml'}:2)"]


def test_a_wildcard_listener_clashes_with_any_address_on_its_port(tmp_path):
    write(tmp_path, CHANNEL, "dicom: {enabled: false}\n")
    (tmp_path / "channels" / "c2.yaml").write_text(CHANNEL.replace("c1", "c2") + "  host: 0.0.0.0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, {})
    assert exc.value.problems == [f"{tmp_path / 'channels' / 'c2.yaml'}:4: source.port: 2575 is already"
                                  " used by channel 'c1'"
                                  f" ({tmp_path / 'channels' / 'c1.yaml'}:4)"]


def test_an_unknown_mpps_status_destination_gets_a_did_you_mean(tmp_path):
    dest = "destinations:\n  - {name: ris-status, type: mllp, host: h, port: 1}\n"
    engine = "dicom: {enabled: false}\nmpps:\n  status_destination: ris-stats\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL + dest, engine), {})
    assert exc.value.problems == [f"{tmp_path / 'engine.yaml'}:3: mpps.status_destination: no destination"
                                  " named 'ris-stats' (did you mean 'ris-status'?)"]


def test_the_shipped_archive_reads_its_secondary_and_s3_endpoint_from_the_environment():
    env = {"RADBRIDGE_ARCHIVE_SECONDARY": "s3://images/site-a", "RADBRIDGE_ARCHIVE_ENDPOINT_URL": "http://s3:8333"}
    archive = load_config(ROOT / "config", env).engine.archive
    assert (archive.secondary, archive.s3.endpoint_url) == ("s3://images/site-a", "http://s3:8333")
    assert load_config(ROOT / "config", {}).engine.archive.secondary is None


@pytest.mark.parametrize(("secondary", "message"), [
    ("gs://bucket/x", "unknown storage location kind 'gs'"),
    ("s3:///prefix", "s3:// location without a bucket"),
])
def test_an_archive_secondary_of_unknown_kind_or_without_bucket_is_refused(tmp_path, secondary, message):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL, f"archive:\n  secondary: {secondary}\n"), {})
    (problem,) = exc.value.problems
    assert problem.startswith(f"{tmp_path / 'engine.yaml'}:2: archive.secondary:") and message in problem


def test_a_replication_timeout_longer_than_the_outbox_lease_is_refused(tmp_path):
    engine = "outbox:\n  lease_seconds: 30\narchive:\n  secondary: /x\n  replication_timeout_seconds: 60\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL, engine), {})
    assert exc.value.problems == [f"{tmp_path / 'engine.yaml'}:5: archive.replication_timeout_seconds: needs"
                                  " outbox.lease_seconds of at least 71 (now 30)"]


def test_an_s3_primary_must_be_an_object_store(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL, "archive:\n  primary_s3: /srv/archive\n"), {})
    (problem,) = exc.value.problems
    assert problem.startswith(f"{tmp_path / 'engine.yaml'}:2: archive.primary_s3:") and "s3://bucket" in problem


def test_spool_bounds_that_cannot_fit_refuse_to_load(tmp_path):
    engine = ("dicom: {enabled: false, max_instance_bytes: 8589934592, max_spool_bytes_per_host: 4294967296}\n"
              "archive: {min_free_bytes: -1}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL, engine), {})
    found = "\n".join(exc.value.problems)
    assert "dicom" in found and "max_spool_bytes_per_host (4294967296) must be at least max_instance_bytes" in found
    assert "archive.min_free_bytes" in found


def test_an_instance_limit_under_a_mebibyte_refuses_to_load(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, CHANNEL, "dicom: {enabled: false, max_instance_bytes: 1000}\n"), {})
    assert "dicom.max_instance_bytes" in "\n".join(exc.value.problems)


def test_the_default_instance_limit_takes_a_one_gigabyte_multiframe():
    from engine.config.models import ArchiveConfig, DicomConfig

    dicom = DicomConfig()
    assert dicom.max_instance_bytes >= 1 << 30 and dicom.max_spool_bytes_per_host >= dicom.max_instance_bytes
    assert ArchiveConfig().min_free_bytes == 1 << 30


def test_by_default_ten_hosts_at_their_per_host_limit_do_not_take_every_association_slot():
    from engine.config.models import DicomConfig

    dicom = DicomConfig()
    assert dicom.max_associations >= 10 * dicom.max_associations_per_host


def test_loading_a_file_again_and_again_keeps_no_copy_of_it(tmp_path: Path) -> None:
    """Every `radbridge reload` loads every file again; each load's nodes and text stayed alive for good
    (the engine grew ~1.4 MB a reload on the shipped configuration)."""
    import gc
    import tracemalloc

    path = tmp_path / "big.yaml"
    path.write_text("items:\n" + "".join(f"  - {{name: item{n}, port: {n}, on: true}}\n" for n in range(200)))
    tracemalloc.start()
    try:
        load_yaml(path, env={})
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            load_yaml(path, env={})
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown} bytes kept after 20 loads"
