"""A peer that sends and never reads its ACKs: the listener stops reading it instead of buffering answers.

Found by an adversarial pass against a running engine: the listener paused a connection only
while 64 frames waited for their answers; answers the peer did not read piled up in the
transport's write buffer without limit (the engine's RSS grew with every message such a peer
sent). Now a connection whose transport holds more than its high-water mark of unsent answers is
not read until they drain, and every answer still arrives once, in order, when the peer reads.
"""

import asyncio
import contextlib
import socket
import threading
import time

import pytest

from engine.hl7.er7 import Message
from tests.mllp.test_listener import MSG, make_server


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_answers_a_peer_does_not_read_stay_bounded_and_all_arrive_when_it_reads(tmp_path, loop_kind):
    count = 12000
    answers: list[str] = []
    largest = {"buffer": 0}
    stop = threading.Event()

    def client(port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(60)
        sent = threading.Event()

        def send_all() -> None:
            with contextlib.suppress(OSError):
                for n in range(count):
                    sock.sendall(b"\x0b" + MSG.replace(b"{n}", f"P{n}".encode()) + b"\x1c\r")
            sent.set()

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        time.sleep(6.0)  # the peer reads nothing meanwhile
        buf = b""
        while len(answers) < count:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
            while b"\x1c\r" in buf:
                one, buf = buf.split(b"\x1c\r", 1)
                answers.append(Message(one.strip(b"\x0b").decode()).segment("MSA").value(2))
        sender.join(30)
        sock.close()

    async def watch(server) -> None:
        while not stop.is_set():
            for conn in list(server.admission.connections):
                if conn.transport is not None:
                    largest["buffer"] = max(largest["buffer"], conn.transport.get_write_buffer_size())
            await asyncio.sleep(0.01)

    async def scenario():
        server, db = make_server(tmp_path)
        await server.start()
        for sock in server._server.sockets:  # accepted connections inherit a small send buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        watcher = asyncio.create_task(watch(server))
        try:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)
        finally:
            stop.set()
            await watcher
            await server.stop()
            db.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
    assert answers == [f"CP{n}" for n in range(count)]
    # Bounded by the transport's high-water mark (64 KiB) plus the answers to the frames of one read
    # (up to 256 KiB of them, ~290 KB of answers here); unbounded, it held all 12,000 (~1 MB).
    assert largest["buffer"] < 512 * 1024, largest
