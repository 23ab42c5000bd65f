"""The MLLP listener in process: TLS and mutual TLS, idle timeout, garbage then a valid message."""

import asyncio
import ssl
from pathlib import Path

import pytest

from channels.mllp.client import MLLPClient
from channels.mllp.source import MLLPServer
from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.config.models import ChannelConfig
from engine.hl7.er7 import Message
from engine.store.database import Database
from tests.pki import make_pki

MSG = b"MSH|^~\\&|RIS|H|RB|R|20261122083000||ADT^A08|C{n}|P|2.5\rPID|1||MRN1^^^H||DOE^JANE\r"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_server(tmp_path: Path, **source) -> tuple[MLLPServer, Database]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    cfg = ChannelConfig.model_validate({"name": "t", "source": {"type": "mllp", "port": 0, **source}})
    runner = ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [], "RB", ""), db)
    return MLLPServer(cfg.source, runner), db


def code(answer: bytes) -> str:
    return Message(answer.decode()).segment("MSA").value(1)


def test_mutual_tls_accepts_a_client_with_a_certificate(tmp_path, pki):
    async def scenario():
        tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key"),
               "ca_file": str(pki / "ca.pem"), "require_client_cert": True}
        server, db = make_server(tmp_path, tls=tls)
        await server.start()
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        client = MLLPClient("127.0.0.1", server.port, 10, ctx, "localhost")
        try:
            assert code(await client.send(MSG.replace(b"{n}", b"1"))) == "AA"
            anonymous = MLLPClient("127.0.0.1", server.port, 10, ssl.create_default_context(cafile=str(pki / "ca.pem")),
                                   "localhost")
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await anonymous.send(MSG.replace(b"{n}", b"2"))
            await anonymous.close()
        finally:
            await client.close()
            await server.stop()
            db.close()

    asyncio.run(scenario())


def test_garbage_then_valid_message_on_the_same_connection(tmp_path):
    async def scenario():
        server, db = make_server(tmp_path)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"random junk\r\n\x0b\x00\xff\xfenot hl7\x1c\r")
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            assert code(first.strip(b"\x0b\x1c\r")) == "AR"
            writer.write(b"\x0b" + MSG.replace(b"{n}", b"3") + b"\x1c\r")
            await writer.drain()
            second = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            assert code(second.strip(b"\x0b\x1c\r")) == "AA"
        finally:
            writer.close()
            await server.stop()
            db.close()

    asyncio.run(scenario())


def test_idle_connections_are_closed(tmp_path):
    async def scenario():
        server, db = make_server(tmp_path, idle_timeout_seconds=0.3)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await server.stop()
            db.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_pipelined_answers_stay_in_order_when_the_peer_reads_slowly(tmp_path, monkeypatch, loop_kind):
    """A sender that pipelines and reads late: answers that the socket cannot take at once go
    through the transport's buffer, and every answer arrives once, in order."""
    import socket
    import threading
    import time

    import channels.mllp.source as source

    writes = {"direct": 0, "partial": 0}
    threads: set[str] = set()
    real_write = source._write

    def counting_write(fd: int, data: bytes) -> int:
        sent = real_write(fd, data)
        writes["direct"] += 1
        writes["partial"] += sent < len(data)
        threads.add(threading.current_thread().name)
        return sent

    monkeypatch.setattr(source, "_write", counting_write)
    count = 1500
    answers: list[str] = []

    def client(port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(60)

        def send_all() -> None:
            for n in range(count):
                sock.sendall(b"\x0b" + MSG.replace(b"{n}", f"P{n}".encode()) + b"\x1c\r")

        sender = threading.Thread(target=send_all)
        sender.start()
        time.sleep(1.0)  # let the server's answers back up
        buf = b""
        while len(answers) < count:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
            while b"\x1c\r" in buf:
                one, buf = buf.split(b"\x1c\r", 1)
                answers.append(Message(one.strip(b"\x0b").decode()).segment("MSA").value(2))
        sender.join()
        sock.close()

    async def scenario():
        server, db = make_server(tmp_path)
        await server.start()
        for sock in server._server.sockets:  # accepted connections inherit a small send buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)
        finally:
            await server.stop()
            db.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
    assert answers == [f"CP{n}" for n in range(count)]
    # both paths were taken: straight to the socket, and through the transport's buffer
    assert writes["direct"] > 0 and (writes["partial"] or writes["direct"] < count), writes
    # the writer thread sent answers itself right after their commit (the rest: the loop)
    assert "radbridge-writer" in threads, threads


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_lone_sender_is_committed_in_the_event_loop_without_the_writer_thread(tmp_path, monkeypatch, loop_kind):
    """One message at a time and nothing else queued: the event loop commits it itself and writes its ACK."""
    import threading

    import channels.mllp.source as source

    threads: list[str] = []
    real_write = source._write

    def watching_write(fd: int, data: bytes) -> int:
        threads.append(threading.current_thread().name)
        return real_write(fd, data)

    monkeypatch.setattr(source, "_write", watching_write)

    inline: list[int] = []

    async def scenario() -> list[str]:
        server, db = make_server(tmp_path)
        await server.start()
        try:
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                return [code(await client.send(MSG.replace(b"{n}", str(n).encode()))) for n in range(20)]
            finally:
                await client.close()
                inline.append(db.writer.inline_commits)
        finally:
            await server.stop()
            db.close()

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    assert run(scenario()) == ["AA"] * 20
    assert inline == [20]
    assert threads == [threading.main_thread().name] * 20


def test_when_other_frames_wait_the_message_is_queued_and_the_writer_thread_answers(tmp_path, monkeypatch):
    """Frames wait elsewhere in the process (so the message may share a commit): it goes to the writer
    thread, which writes its ACK right after the commit; a busy writer is never bypassed."""
    import threading

    import channels.mllp.source as source

    threads: list[str] = []
    real_write = source._write

    def watching_write(fd: int, data: bytes) -> int:
        threads.append(threading.current_thread().name)
        return real_write(fd, data)

    monkeypatch.setattr(source, "_write", watching_write)

    async def scenario() -> tuple[list[str], int]:
        server, db = make_server(tmp_path)
        await server.start()
        try:
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                source._LOAD.frames += 3  # as if three frames waited on other connections
                try:
                    answers = [code(await client.send(MSG.replace(b"{n}", f"Q{n}".encode()))) for n in range(5)]
                finally:
                    source._LOAD.frames -= 3
                gate = threading.Event()
                db.writer.submit(lambda conn: gate.wait(10))  # other work holds the writer
                sent = asyncio.ensure_future(client.send(MSG.replace(b"{n}", b"busy")))
                await asyncio.sleep(0.3)
                assert not sent.done()  # alone, but the writer is busy: queued, not committed beside it
                gate.set()
                answers.append(code(await sent))
                return answers, db.writer.inline_commits
            finally:
                await client.close()
        finally:
            await server.stop()
            db.close()

    assert asyncio.run(scenario()) == (["AA"] * 6, 0)
    assert threads[:5] == ["radbridge-writer"] * 5


def test_a_connection_closed_while_its_message_commits_gets_nothing_and_hurts_nothing(tmp_path):
    """The peer resets the connection mid-message: the writer's early answer is dropped, the
    message is still stored, and the listener keeps serving."""
    import socket
    import struct

    from sqlalchemy import func, select

    from engine.store.schema import messages

    async def scenario() -> str:
        server, db = make_server(tmp_path)
        await server.start()
        gate = __import__("threading").Event()
        db.writer.submit(lambda conn: gate.wait(10))  # hold the writer while the peer goes away
        try:
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(b"\x0b" + MSG.replace(b"{n}", b"gone") + b"\x1c\r")
            await asyncio.sleep(0.3)
            sock.close()  # RST
            await asyncio.sleep(0.3)
            gate.set()
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                answer = code(await client.send(MSG.replace(b"{n}", b"next")))
            finally:
                await client.close()
            stored = db.read(lambda c: c.execute(select(func.count()).select_from(messages)).scalar_one())
            assert stored == 2
            return answer
        finally:
            await server.stop()
            db.close()

    assert asyncio.run(scenario()) == "AA"


def test_the_engine_lifts_its_open_file_limit_for_the_second_descriptor_per_connection():
    """Each plain-TCP connection holds two descriptors; a low soft limit is raised to the hard one."""
    import subprocess
    import sys

    script = (
        "import resource\n"
        "from engine.runtime import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    reported, soft, hard = (int(v) for v in done.stdout.split())
    assert reported == soft and soft > 256
    assert soft == hard or hard == -1  # RLIM_INFINITY is -1


def test_connections_give_back_both_their_descriptors(tmp_path):
    """Open and close many connections: the process does not keep their duplicates."""
    import os
    import socket

    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    def client(port: int) -> None:  # in a thread: the server shares this test's event loop
        for n in range(50):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"\x0b" + MSG.replace(b"{n}", str(n).encode()) + b"\x1c\r")
                assert b"MSA|AA" in sock.recv(4096)

    async def scenario() -> tuple[int, int]:
        server, db = make_server(tmp_path)
        await server.start()
        try:
            before = count()
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)
            await asyncio.sleep(0.3)  # let the last connection_lost run
            return before, count()
        finally:
            await server.stop()
            db.close()

    before, after = asyncio.run(scenario())
    assert after <= before + 2, (before, after)
