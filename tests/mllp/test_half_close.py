"""A sender that pipelines frames and then half-closes its side (``shutdown(SHUT_WR)``, issue #11)."""

import asyncio
import socket
import threading

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy import select

from engine.store.schema import messages
from tests.mllp.test_listener import MSG, serving


def read_to_eof(sock: socket.socket) -> list[bytes]:
    """Every answer frame's payload until the listener closes the connection."""
    sock.settimeout(15)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [part.lstrip(b"\x0b") for part in data.split(b"\x1c\r") if part]


def answered(payloads: list[bytes]) -> list[tuple[str, str]]:
    """(MSA-1, MSA-2) of each answer."""
    out = []
    for payload in payloads:
        msa = hl7.parse(payload.decode()).segment("MSA")
        out.append((str(msa[1]), str(msa[2])))
    return out


def stored(db) -> list[tuple[str, str]]:
    rows = db.read(lambda c: c.execute(select(messages.c.control_id, messages.c.status).order_by(messages.c.id)).all())
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_pipelined_frames_then_a_half_close_are_all_stored_and_answered_in_order(tmp_path, loop_kind):
    async def scenario():
        async with serving(tmp_path) as (server, db):

            def sender() -> list[bytes]:
                with socket.create_connection(("127.0.0.1", server.port)) as sock:
                    sock.sendall(b"".join(b"\x0b" + MSG.replace(b"{n}", f"H{n}".encode()) + b"\x1c\r"
                                          for n in range(5)))
                    sock.shutdown(socket.SHUT_WR)
                    return read_to_eof(sock)

            answers = await asyncio.to_thread(sender)
            return answered(answers), stored(db)

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    answers, rows = run(scenario())
    assert answers == [("AA", f"CH{n}") for n in range(5)]
    assert rows == [(f"CH{n}", "PROCESSED") for n in range(5)]


def test_a_half_close_while_the_writer_is_busy_still_gets_every_answer(tmp_path):
    """The frames wait for a commit when the peer's EOF arrives: they are committed and answered, then the
    connection closes (before, the commit happened and the answer was lost)."""

    async def scenario():
        async with serving(tmp_path) as (server, db):
            gate = threading.Event()
            db.writer.submit(lambda conn: gate.wait(10))
            sock = socket.create_connection(("127.0.0.1", server.port))
            try:
                sock.sendall(b"".join(b"\x0b" + MSG.replace(b"{n}", n) + b"\x1c\r" for n in (b"W1", b"W2")))
                sock.shutdown(socket.SHUT_WR)
                await asyncio.sleep(0.3)
                gate.set()
                answers = await asyncio.to_thread(read_to_eof, sock)
            finally:
                sock.close()
            return answered(answers), stored(db)

    answers, rows = asyncio.run(scenario())
    assert answers == [("AA", "CW1"), ("AA", "CW2")]
    assert rows == [("CW1", "PROCESSED"), ("CW2", "PROCESSED")]


def test_several_messages_in_one_frame_then_a_half_close_get_an_ack_each_in_order(tmp_path):
    """A real MLLP client (python-hl7) sends one frame holding three messages and half-closes: the answer
    frame carries one ACK per stored message, in the order sent."""

    async def scenario():
        async with serving(tmp_path) as (server, db):
            reader, writer = await open_hl7_connection("127.0.0.1", server.port)
            try:
                text = b"".join(MSG.replace(b"{n}", f"M{n}".encode()) for n in range(3)).decode()
                writer.writemessage(hl7.parse(text))
                writer.write_eof()
                await writer.drain()
                answer = await asyncio.wait_for(reader.readmessage(), 10)
                assert await asyncio.wait_for(reader.read(), 10) == b""  # then the listener closes
            finally:
                writer.close()
            acks = [(str(seg[1]), str(seg[2])) for seg in answer if str(seg[0]) == "MSA"]
            return acks, stored(db)

    acks, rows = asyncio.run(scenario())
    assert acks == [("AA", f"CM{n}") for n in range(3)]
    assert rows == [(f"CM{n}", "PROCESSED") for n in range(3)]


def test_a_half_close_inside_a_frame_answers_what_came_before_and_keeps_the_rest(tmp_path):
    async def scenario():
        async with serving(tmp_path) as (server, db):

            def sender() -> list[bytes]:
                with socket.create_connection(("127.0.0.1", server.port)) as sock:
                    sock.sendall(b"\x0b" + MSG.replace(b"{n}", b"K1") + b"\x1c\r\x0bMSH|^~\\&|half a message")
                    sock.shutdown(socket.SHUT_WR)
                    return read_to_eof(sock)

            answers = await asyncio.to_thread(sender)
            await asyncio.sleep(0.3)  # the unfinished frame is stored after the connection closes
            rows = db.read(lambda c: c.execute(
                select(messages.c.status, messages.c.raw, messages.c.error).order_by(messages.c.id)).all())
            return answered(answers), [tuple(r) for r in rows]

    answers, rows = asyncio.run(scenario())
    assert answers == [("AA", "CK1")]
    assert rows[0][0] == "PROCESSED"
    assert rows[1] == ("REJECTED", b"MSH|^~\\&|half a message", "connection closed inside an MLLP frame")
