"""What peers may hold of an MLLP listener: connections, time and bytes (issue #12).

The attacker connects from 127.0.0.2 (another loopback address) where the test needs
two peers; the good sender is python-hl7's MLLP client, or a raw socket.
"""

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy import func, select

from engine.store.schema import messages
from tests.mllp.test_listener import MSG, code, serving

ATTACKER = "127.0.0.2"


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@contextlib.contextmanager
def held(port: int, count: int, source: str = ATTACKER) -> Iterator[list[socket.socket]]:
    socks = [connect(port, source) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_server(sock: socket.socket, wait: float = 0.0) -> bool:
    """Has the listener closed ``sock`` (EOF or reset), looking for up to ``wait`` seconds?"""
    sock.settimeout(wait or 0.001)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


async def good_sender(port: int, n: str) -> tuple[str, float]:
    """python-hl7's MLLP client sends one message: (MSA-1, seconds until the ACK)."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(open_hl7_connection("127.0.0.1", port), 5)
    try:
        writer.writemessage(hl7.parse(MSG.replace(b"{n}", n.encode()).decode()))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 5)
        return str(ack.segment("MSA")[1]), time.monotonic() - started
    finally:
        writer.close()


def count_rows(db) -> int:
    return db.read(lambda c: c.execute(select(func.count()).select_from(messages)).scalar_one())


def test_the_issue_case_256_idle_connections_from_one_peer_do_not_shut_out_a_sender(tmp_path):
    """Defaults: the maximum of silent connections from the sender's own address; its new connection takes
    the place of the longest-idle one and is answered at once."""

    async def scenario():
        async with serving(tmp_path) as (server, _db):
            with held(server.port, server.config.max_connections, "127.0.0.1") as socks:
                await asyncio.sleep(0.5)
                open_before = len(server.admission.connections)
                answer, took = await good_sender(server.port, "G1")
                return open_before, answer, took, sum(closed_by_server(s) for s in socks)

    open_before, answer, took, evicted = asyncio.run(scenario())
    print(f"held {open_before} idle connections; ACK after {took * 1000:.0f} ms; {evicted} closed to make room")
    assert answer == "AA" and took < 2.0
    assert evicted >= 1


def test_one_peer_holds_at_most_its_share_and_other_senders_keep_working(tmp_path):
    async def scenario():
        async with serving(tmp_path, max_connections=40, max_connections_per_peer=10) as (server, _db):
            with held(server.port, 25) as socks:
                await asyncio.sleep(0.5)
                from_attacker = server.admission.per_peer.get(ATTACKER, 0)
                answers = [await good_sender(server.port, f"S{n}") for n in range(3)]
                still_open = [not closed_by_server(s) for s in socks]
                return from_attacker, answers, still_open

    from_attacker, answers, still_open = asyncio.run(scenario())
    assert from_attacker == 10
    assert [a for a, _ in answers] == ["AA"] * 3 and max(t for _, t in answers) < 2.0
    # the peer's newest connections replaced its oldest idle ones
    assert still_open == [False] * 15 + [True] * 10


def test_at_the_global_limit_the_longest_idle_connection_makes_room(tmp_path):
    async def scenario():
        async with serving(tmp_path, max_connections=20, max_connections_per_peer=20) as (server, _db):
            with held(server.port, 20) as socks:
                await asyncio.sleep(0.3)
                socks[0].sendall(b"\x0b" + MSG.replace(b"{n}", b"A0") + b"\x1c\r")  # the first is active again
                socks[0].settimeout(5)
                assert b"MSA|AA" in await asyncio.to_thread(socks[0].recv, 4096)
                await asyncio.sleep(0.1)
                answer, took = await good_sender(server.port, "G2")
                return answer, took, [closed_by_server(s) for s in socks]

    answer, took, closed = asyncio.run(scenario())
    assert answer == "AA" and took < 2.0
    assert closed[0] is False and closed[1] is True  # the second was idle longest
    assert sum(closed) == 1


def test_a_new_connection_is_refused_only_when_every_connection_is_working(tmp_path):
    """Connections whose frames wait for a commit are never closed to make room."""
    import threading

    async def scenario():
        async with serving(tmp_path, max_connections=2, max_connections_per_peer=2) as (server, db):
            gate = threading.Event()
            db.writer.submit(lambda conn: gate.wait(10))
            with held(server.port, 2) as socks:
                for n, sock in enumerate(socks):
                    sock.sendall(b"\x0b" + MSG.replace(b"{n}", f"B{n}".encode()) + b"\x1c\r")
                await asyncio.sleep(0.3)
                late = connect(server.port)
                try:
                    refused = await asyncio.to_thread(closed_by_server, late, 2.0)
                finally:
                    late.close()
                gate.set()
                answers = []
                for sock in socks:
                    sock.settimeout(5)
                    answers.append(code((await asyncio.to_thread(sock.recv, 4096)).strip(b"\x0b\x1c\r")))
                return refused, answers

    refused, answers = asyncio.run(scenario())
    assert refused
    assert answers == ["AA", "AA"]


def test_a_connection_that_sends_nothing_is_closed_after_the_first_byte_timeout(tmp_path):
    async def scenario():
        async with serving(tmp_path, first_byte_timeout_seconds=0.5, idle_timeout_seconds=60) as (server, _db):
            silent, talker = connect(server.port), connect(server.port)
            try:
                talker.sendall(b"\x0b" + MSG.replace(b"{n}", b"T1") + b"\x1c\r")
                talker.settimeout(5)
                assert b"MSA|AA" in await asyncio.to_thread(talker.recv, 4096)
                started = time.monotonic()
                silent_closed = await asyncio.to_thread(closed_by_server, silent, 5.0)
                waited = time.monotonic() - started
                await asyncio.sleep(0.5)
                return silent_closed, waited, closed_by_server(talker)
            finally:
                silent.close()
                talker.close()

    silent_closed, waited, talker_closed = asyncio.run(scenario())
    assert silent_closed and 0.2 < waited < 2.0
    assert not talker_closed  # a connection that sent a message keeps the (long) idle timeout


def test_an_unfinished_frame_is_abandoned_after_the_frame_timeout_and_kept_once(tmp_path):
    async def scenario():
        async with serving(tmp_path, frame_timeout_seconds=0.5, max_kept_bytes=1024) as (server, db):
            sock = connect(server.port)
            try:
                sock.sendall(b"\x0bMSH|^~\\&|" + b"x" * 5000)
                await asyncio.sleep(0.1)
                for _ in range(3):  # still trickling: the frame timeout counts from its start
                    sock.sendall(b"y")
                    await asyncio.sleep(0.1)
                closed = await asyncio.to_thread(closed_by_server, sock, 3.0)
            finally:
                sock.close()
            await asyncio.sleep(0.3)
            rows = db.read(lambda c: c.execute(select(messages.c.status, messages.c.raw, messages.c.text,
                                                      messages.c.error)).all())
            return closed, [tuple(r) for r in rows]

    closed, rows = asyncio.run(scenario())
    assert closed
    assert len(rows) == 1
    status, raw, text, error = rows[0]
    assert status == "REJECTED" and len(raw) == 1024 and raw.startswith(b"MSH|") and text == ""
    assert error == "connection closed inside an MLLP frame"


def test_an_oversize_frame_is_answered_ar_and_stored_once_truncated(tmp_path):
    async def scenario():
        async with serving(tmp_path, max_message_bytes=4096, max_kept_bytes=2048) as (server, db):
            big = MSG.replace(b"{n}", b"BIG") + b"OBX|1|TX|||" + b"z" * 100_000 + b"\r"
            sock = connect(server.port)
            try:
                sock.sendall(b"\x0b" + big + b"\x1c\r")
                sock.settimeout(5)
                answer = await asyncio.to_thread(sock.recv, 4096)
            finally:
                sock.close()
            rows = db.read(lambda c: c.execute(select(messages.c.status, messages.c.raw, messages.c.text)).all())
            return answer, [tuple(r) for r in rows]

    answer, rows = asyncio.run(scenario())
    msa = hl7.parse(answer.strip(b"\x0b\x1c\r").decode()).segment("MSA")
    assert (str(msa[1]), str(msa[2])) == ("AR", "CBIG")
    [(status, raw, text)] = rows
    assert status == "REJECTED" and len(raw) == 2048
    assert text.startswith("MSH|") and len(text) < 100  # the header it was answered by, not a second copy


def test_large_unfinished_frames_are_held_back_within_the_byte_budget_while_small_messages_pass(tmp_path):
    """Eight connections stream 300 KB frames and never finish them: reading from them pauses once the
    listener holds its budget; ordinary messages are still answered; the frames are abandoned at their
    timeout and the paused connections read again."""
    budget = 512 * 1024

    async def scenario():
        async with serving(tmp_path, max_message_bytes=400_000, max_buffered_bytes=budget,
                           frame_timeout_seconds=2.0) as (server, db):
            peak = 0

            def stream(sock: socket.socket) -> None:
                sock.setblocking(False)
                with contextlib.suppress(OSError):
                    sock.send(b"\x0bMSH|^~\\&|" + b"x" * 300_000)

            with held(server.port, 8) as socks:
                for sock in socks:
                    await asyncio.to_thread(stream, sock)
                for _ in range(10):
                    await asyncio.sleep(0.05)
                    peak = max(peak, server.admission.buffered)
                paused = len(server.admission.starved)
                answers = [await good_sender(server.port, f"P{n}") for n in range(3)]
                await asyncio.sleep(3.0)
                return peak, paused, answers, server.admission.buffered, count_rows(db)

    peak, paused, answers, after, rows = asyncio.run(scenario())
    print(f"peak {peak} bytes held (budget {budget}); {paused} connections paused")
    assert paused >= 1
    assert peak <= budget + 8 * 256 * 1024  # over it by at most one read (asyncio reads 256 KiB) a connection
    assert [a for a, _ in answers] == ["AA"] * 3
    assert after == 0 and rows == 3 + 8


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_tls_listeners_have_the_same_limits(tmp_path, pki, caplog, loop_kind):
    """TLS: a peer that never completes the handshake, and one that completes it and sends nothing, are
    closed at the first-byte timeout; at the connection limit a TLS sender still gets its ACK."""
    tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))

    def tls_connect(port: int) -> ssl.SSLSocket:
        return client_ctx.wrap_socket(connect(port, ATTACKER), server_hostname="localhost")

    async def scenario():
        async with serving(tmp_path, tls=tls, first_byte_timeout_seconds=0.5, max_connections=5,
                           max_connections_per_peer=5) as (server, _db):
            raw = connect(server.port, ATTACKER)  # TCP only, no ClientHello
            idle = [await asyncio.to_thread(tls_connect, server.port) for _ in range(5)]
            try:
                await asyncio.sleep(0.1)
                full = len(server.admission.connections)
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx,
                                                               server_hostname="localhost")
                started = time.monotonic()
                writer.write(b"\x0b" + MSG.replace(b"{n}", b"TLS1") + b"\x1c\r")
                answer = code((await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)).strip(b"\x0b\x1c\r"))
                took = time.monotonic() - started
                writer.close()
                raw_closed = await asyncio.to_thread(closed_by_server, raw, 3.0)
                idle_closed = [await asyncio.to_thread(closed_by_server, s, 3.0) for s in idle]
                return full, answer, took, raw_closed, idle_closed
            finally:
                raw.close()
                for s in idle:
                    s.close()

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    with caplog.at_level("DEBUG"):
        full, answer, took, raw_closed, idle_closed = run(scenario())
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelname == "ERROR"] == []
    assert full == 5
    assert answer == "AA" and took < 2.0
    assert raw_closed and all(idle_closed)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("use_tls", [False, True])
def test_a_peer_resetting_connections_is_logged_in_one_line_without_a_traceback(
    tmp_path, pki, caplog, loop_kind, use_tls
):
    import struct
    import threading

    tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")} if use_tls else None
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))

    def reset_after(port: int, payload: bytes) -> None:
        sock = connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if tls is not None:
            sock = client_ctx.wrap_socket(sock, server_hostname="localhost")
        if payload:
            sock.sendall(payload)
        time.sleep(0.1)
        sock.close()  # RST (and, with TLS, no close_notify)

    async def scenario():
        async with serving(tmp_path, tls=tls) as (server, db):
            for payload in (b"", b"\x0bMSH|^~\\&|half", b"\x0b" + MSG.replace(b"{n}", b"R1") + b"\x1c\r"):
                await asyncio.to_thread(reset_after, server.port, payload)
                await asyncio.sleep(0.1)
            gate = threading.Event()  # gone while its message commits: its answer has nowhere to go
            db.writer.submit(lambda conn: gate.wait(10))
            await asyncio.to_thread(reset_after, server.port, b"\x0b" + MSG.replace(b"{n}", b"R3") + b"\x1c\r")
            await asyncio.sleep(0.2)
            gate.set()
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_ctx if tls else None, server_hostname="localhost" if tls else None
            )
            writer.write(b"\x0b" + MSG.replace(b"{n}", b"R2") + b"\x1c\r")
            answer = code((await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)).strip(b"\x0b\x1c\r"))
            writer.close()
            return answer

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    with caplog.at_level("DEBUG"):
        assert run(scenario()) == "AA"
    noisy = [r.getMessage() for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    assert noisy == []


def test_bytes_of_pipelined_frames_are_released_as_they_are_answered(tmp_path):
    """Three connections each pipeline 30 frames in one write (one more split across two writes): once
    every frame is answered, and while the connections are still open, the listener holds no bytes."""

    def pipeline(port: int, tag: str) -> tuple[socket.socket, list[str]]:
        sock = connect(port)
        frames = [b"\x0b" + MSG.replace(b"{n}", f"{tag}{i}".encode()) + b"\x1c\r" for i in range(31)]
        sock.sendall(b"".join(frames[:30]) + frames[30][:40])
        time.sleep(0.05)
        sock.sendall(frames[30][40:])
        data = b""
        sock.settimeout(10)
        while data.count(b"\x1c\r") < 31:
            data += sock.recv(65536)
        return sock, [code(f.strip(b"\x0b")) for f in data.split(b"\x1c\r") if f.strip()]

    async def scenario():
        async with serving(tmp_path) as (server, db):
            results = await asyncio.gather(*(asyncio.to_thread(pipeline, server.port, t) for t in "ABC"))
            try:
                await asyncio.sleep(0.1)
                held_now = server.admission.buffered, [c._held for c in server.admission.connections]
            finally:
                for sock, _ in results:
                    sock.close()
            return [answers for _, answers in results], held_now, count_rows(db)

    answers, (buffered, per_connection), rows = asyncio.run(scenario())
    assert answers == [["AA"] * 31] * 3 and rows == 93
    assert buffered == 0 and per_connection == [0, 0, 0]


def test_oversize_and_abandoned_frames_are_said_in_the_log_once_with_their_size(tmp_path, caplog):
    """A frame that never ends, far past max_message_bytes, then a close: one WARNING (throttled) naming the
    peer and the size, not silence (the row is REJECTED in the store either way)."""
    async def scenario():
        async with serving(tmp_path, max_message_bytes=4096, max_kept_bytes=2048) as (server, db):
            sock = connect(server.port)
            sock.sendall(b"\x0b" + MSG.replace(b"{n}", b"ENDLESS") + b"NTE|1||" + b"y" * 3_000_000)
            sock.close()
            for _ in range(100):
                if db.read(lambda c: c.execute(select(messages.c.status)).all()):
                    break
                await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="channels.mllp"):
        asyncio.run(scenario())
    lines = [r for r in caplog.records if "stored (REJECTED)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    text = lines[0].getMessage()
    assert "a frame its connection ended inside from 127.0.0.1:" in text and "the first 2048 stored" in text
    assert int(text.split(": ")[2].split(" bytes")[0]) > 3_000_000
    assert "ENDLESS" not in text and "yyyy" not in text
