"""Invalid mapping or channel files are never applied: run refuses, reload keeps the running version."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time

import pytest

from tests.conftest import ROOT, EngineProcess, free_port
from tests.integration.conftest import Sender

pytestmark = pytest.mark.slow

ORDER = ("MSH|^~\\&|RIS|NORTH|RB|NORTH|20261122080000||ORM^O01|{cid}|P|2.3.1\r"
         "PID|1||MRN1^^^NORTH||DOE^JO\rORC|NW|P1|F1||SC\r"
         "OBR|1|P1|F1|CTHEAD^CT head^L" + "|" * 14 + "ACC1|RP1|SPS1||||CT\r")


def exchange(port: int, text: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + text.encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def setup(engine: EngineProcess, tmp_path) -> tuple[int, object]:
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    port = free_port()
    (engine.config_dir / "engine.yaml").write_text(
        f"data_dir: {engine.data_dir}\nmappings_dir: {mappings}\ndicom: {{enabled: false}}\n")
    (engine.config_dir / "channels" / "orders.yaml").write_text(
        f"name: orders\nsource: {{type: mllp, port: {port}}}\nmapping: order-to-worklist\n")
    return port, mappings


def break_mapping(mappings) -> None:
    path = mappings / "order-to-worklist.yaml"
    text = path.read_text()
    broken = text.replace("path: [PID-3.1,", "path: [PID-3.99.7,", 1)
    assert broken != text, "the shipped mapping no longer reads the patient id as this test expects"
    path.write_text(broken)


def wait_log(engine: EngineProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in engine.log():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in log:\n{engine.log()[-2000:]}")


def test_run_refuses_to_start_with_an_invalid_mapping(engine_process, tmp_path):
    _, mappings = setup(engine_process, tmp_path)
    break_mapping(mappings)
    result = engine_process.cli("run")
    assert result.returncode == 2
    assert "order-to-worklist.yaml:" in result.stderr and "component 99" in result.stderr


def test_reload_keeps_the_running_mapping_when_the_new_one_is_invalid(engine_process, tmp_path):
    port, mappings = setup(engine_process, tmp_path)
    engine_process.start(wait_port=port)
    assert "MSA|AA" in exchange(port, ORDER.format(cid="R1"))
    break_mapping(mappings)
    sighup(engine_process)
    wait_log(engine_process, "reload refused")
    assert "MSA|AA" in exchange(port, ORDER.format(cid="R2"))


def sighup(engine: EngineProcess) -> None:
    """A reload as a service manager sends it (``radbridge reload`` refuses an invalid file before signalling)."""
    assert engine.proc is not None
    os.kill(engine.proc.pid, signal.SIGHUP)


def test_reload_refuses_an_invalid_file_itself_and_does_not_signal_the_engine(engine_process, tmp_path):
    """``radbridge reload`` checked only each file's settings, not what they name: a mistyped handler was
    "sent SIGHUP", exit status 0, and only the engine's log said the reload was refused."""
    port, _ = setup(engine_process, tmp_path)
    engine_process.start(wait_port=port)
    _orders_file(engine_process, port, "handlers: [patiens]\n")
    (engine_process.config_dir / "channels" / "two.yaml").write_text(
        f"name: two\nsource: {{type: mllp, port: {port}}}\nmapping: order-to-worklist\n")

    result = engine_process.cli("reload")

    assert result.returncode == 2, result
    assert "sent SIGHUP" not in result.stdout
    # every problem of every file, as check-config lists them
    assert "handlers.0: unknown handler 'patiens' (did you mean 'patients'?)" in result.stderr
    assert f"source.port: {port} is already used by channel" in result.stderr
    time.sleep(1)
    assert "reload refused" not in engine_process.log() and "configuration valid" not in engine_process.log()
    assert "MSA|AA" in exchange(port, ORDER.format(cid="R9"))


def test_the_engine_refusing_a_reload_logs_every_problem_of_every_file(engine_process, tmp_path):
    """A SIGHUP with a file whose settings are wrong and another naming an unknown handler: the log named the
    first only (the settings were checked, then the refusal came before the references were)."""
    port, _ = setup(engine_process, tmp_path)
    engine_process.start(wait_port=port)
    _orders_file(engine_process, port, "handlers: [patiens]\n")
    (engine_process.config_dir / "channels" / "two.yaml").write_text(
        f"name: two\nsource: {{type: mllp, port: {free_port()}, idle_timeout_seconds: ten}}\n")

    sighup(engine_process)
    wait_log(engine_process, "reload refused")

    log = engine_process.log()
    assert "source.idle_timeout_seconds" in log
    assert "handlers.0: unknown handler 'patiens'" in log


def test_reload_applies_a_valid_change(engine_process, tmp_path):
    port, _ = setup(engine_process, tmp_path)
    engine_process.start(wait_port=port)
    (engine_process.config_dir / "channels" / "orders.yaml").write_text(
        f"name: orders\nsource: {{type: mllp, port: {port}}}\nmapping: order-to-worklist\n"
        "accept: {message_types: ['ADT^*']}\n")
    assert engine_process.cli("reload").returncode == 0
    wait_log(engine_process, "configuration valid")
    reply = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            reply = exchange(port, ORDER.format(cid="R3"))
            if "MSA|AR" in reply:
                break
        except OSError:
            pass
        time.sleep(0.2)
    assert "MSA|AR" in reply


class Peer:
    """One python-hl7 MLLP connection kept open across reloads (``tests.integration.conftest.Sender``)."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.sender = Sender(port)

    def send(self, cid: str) -> str:
        return self.loop.run_until_complete(self.sender.send(ORDER.format(cid=cid).encode())).code

    def close(self) -> None:
        self.loop.run_until_complete(self.sender.close())
        self.loop.close()


def _orders_file(engine: EngineProcess, port: int, extra: str = "") -> None:
    (engine.config_dir / "channels" / "orders.yaml").write_text(
        f"name: orders\nsource: {{type: mllp, port: {port}}}\nmapping: order-to-worklist\n{extra}")


def _hold_port() -> socket.socket:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    return blocker


#: name → (what the broken reload writes, a text of the refusal in the log)
BROKEN_RELOADS = {
    "mistyped handler": (lambda e, port, mappings, busy: _orders_file(e, port, "handlers: [patiens]\n"),
                         "handlers.0: unknown handler 'patiens' (did you mean 'patients'?)"),
    "missing mapping": (lambda e, port, mappings, busy: (mappings / "order-to-worklist.yaml").unlink(),
                        "mapping: unknown mapping 'order-to-worklist'"),
    "port in use": (lambda e, port, mappings, busy: _orders_file(e, busy),
                    "source.port: cannot listen on 127.0.0.1:"),
    "setting read at start only": (
        lambda e, port, mappings, busy: (e.config_dir / "engine.yaml").write_text(
            (e.config_dir / "engine.yaml").read_text() + "database: {pool_size: 7}\n"),
        "database: changed, but database is read at start only"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RELOADS))
def test_a_failed_reload_changes_nothing_and_the_listener_keeps_answering(engine_process, tmp_path, case):
    port, mappings = setup(engine_process, tmp_path)
    extra_port = free_port()
    engine_process.start(wait_port=port)
    peer = Peer(port)
    blocker = _hold_port()
    try:
        assert peer.send("F1") == "AA"
        # A valid new channel in the same reload: it must not start when another part is refused.
        (engine_process.config_dir / "channels" / "extra.yaml").write_text(
            f"name: extra\nsource: {{type: mllp, port: {extra_port}}}\n")
        breaks, refusal = BROKEN_RELOADS[case]
        breaks(engine_process, port, mappings, blocker.getsockname()[1])

        sighup(engine_process)
        wait_log(engine_process, "reload refused")

        assert refusal in engine_process.log()
        assert peer.send("F2") == "AA"  # the connection open across the reload
        assert "MSA|AA" in exchange(port, ORDER.format(cid="F3"))  # and a new one
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", extra_port), timeout=5).close()
        assert engine_process.proc.poll() is None
    finally:
        peer.close()
        blocker.close()


def test_a_valid_reload_applies_to_the_next_frame_of_an_open_connection(engine_process, tmp_path):
    port, _ = setup(engine_process, tmp_path)
    engine_process.start(wait_port=port)
    peer = Peer(port)
    try:
        assert peer.send("V1") == "AA"
        _orders_file(engine_process, port, "accept: {message_types: ['ADT^*']}\n")

        assert engine_process.cli("reload").returncode == 0
        wait_log(engine_process, "configuration valid")

        assert peer.send("V2") == "AR"
    finally:
        peer.close()


def test_a_reload_moves_a_channel_to_a_new_port(engine_process, tmp_path):
    port, _ = setup(engine_process, tmp_path)
    new_port = free_port()
    engine_process.start(wait_port=port)
    _orders_file(engine_process, new_port)

    assert engine_process.cli("reload").returncode == 0
    wait_log(engine_process, "configuration valid")

    assert "MSA|AA" in exchange(new_port, ORDER.format(cid="M1"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
