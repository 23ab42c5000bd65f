"""ChannelRunner: the only orchestrator between a source connector and the store.

A source hands it the payload of one frame; it decodes, splits batches,
prepares every message (pure), has the writer persist them (one group
commit), and returns the bytes to answer with. A failed commit turns into
AE 207 for that message: never AA for something that is not durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.channel.persist import Attempt, Persister, Stored
from engine.channel.prepare import ERROR, REJECTED, Prepared, Preparer
from engine.config.models import ChannelConfig
from engine.errors import ErrorLocation, HL7Error, HL7Reject, StoreUnavailable
from engine.hl7.ack import timestamp
from engine.hl7.batch import BatchError, Split, split_messages
from engine.hl7.charset import Decoded, charset_note, decode
from engine.hl7.er7 import Message
from engine.store.database import Database

__all__ = ["OVERSIZE_TEXT", "ChannelRunner", "Opened"]

log = logging.getLogger(__name__)

#: What is read of an oversize frame to answer it: its first segment, up to this many bytes.
_HEADER_BYTES = 4096
#: How the error of an oversize frame begins (its stored bytes are a fragment: engine.channel.replay).
OVERSIZE_TEXT = "message exceeds the maximum size"


@dataclass(slots=True)
class Opened:
    """One frame's payload decoded, split into messages and prepared (:meth:`ChannelRunner.open`)."""

    decoded: Decoded
    split: Split | None  # None: the batch envelope is broken (``failure`` says how)
    failure: HL7Error | None = None  # answered without preparing anything
    prepared: list[Prepared] = field(default_factory=list)
    single: bool = False  # one message, not in a batch envelope


class ChannelRunner:
    """Runs one configured channel's pipeline for its source connector."""

    def __init__(
        self,
        config: ChannelConfig,
        preparer: Preparer,
        persister: Persister,
        db: Database,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.preparer = preparer
        self.persister = persister
        self.db = db
        self.notify = notify

    @property
    def name(self) -> str:
        return self.config.name

    def open(self, payload: bytes) -> Opened:
        """Decode, split and prepare one frame's payload: the pure part, nothing stored yet."""
        src = self.config.source
        decoded = decode(payload, src.charset_fallback, src.detect_utf8)
        try:
            split = split_messages(decoded.text)
        except BatchError as exc:
            return Opened(decoded, None, exc)
        if not split.messages:
            return Opened(decoded, split, HL7Reject(100, "empty message", ErrorLocation("MSH", 1)))
        single = len(split.messages) == 1 and not split.batch
        # What was skipped before the first header belongs to the message it preceded; how the
        # bytes were read (when not as MSH-18 said) to every message of the frame.
        read_as: tuple[str, ...] = (note,) if (note := charset_note(decoded)) else ()
        if split.batch_notes:  # a trailer's count is wrong: every message of the frame says so
            log.warning("channel %s: batch of %d message(s) received with %s", self.name, len(split.messages),
                        "; ".join(split.batch_notes))
            read_as += tuple(split.batch_notes)
        prepared = [
            self.preparer.prepare(text, payload if single else text.encode(decoded.charset, "replace"),
                                  decoded.charset, (tuple(split.notes) if n == 0 else ()) + read_as)
            for n, text in enumerate(split.messages)
        ]
        return Opened(decoded, split, None, prepared, single)

    def commit_now(self, opened: Opened, peer: str) -> bytes | None:
        """The answer to ``opened`` when it is one message the writer commits in this thread at once.

        None (nothing stored) when it is not a single message, or the writer is busy or
        cannot take the lock without waiting (:meth:`Writer.run_inline`): then
        :meth:`receive` with ``opened`` does the rest.
        """
        if not opened.single:
            return None
        p = opened.prepared[0]
        done, result = self.db.writer.run_inline(Attempt(self.persister, p, peer))
        if not done:
            return None
        return self._answer(p, result).encode(opened.decoded.charset, errors="replace")

    async def receive(
        self,
        payload: bytes,
        peer: str,
        deliver: Callable[[bytes], None] | None = None,
        alone: bool = False,
        opened: Opened | None = None,
    ) -> bytes:
        """Process one frame's payload; return the encoded answer (ACK or batch of ACKs).

        ``deliver`` (optional) may be called from the writer thread with the very bytes
        this returns, as soon as the message is committed; the caller then knows the
        answer has left (or how much of it) before this coroutine resumes.

        ``alone`` says no other frame is waiting anywhere in this process: a single
        message is then committed in this thread when the writer is idle
        (:meth:`commit_now`), saving the hand-over to the writer thread.

        ``opened``: the payload as :meth:`open` returned it, if the caller has it already.
        """
        o = opened or self.open(payload)
        charset = o.decoded.charset
        if o.failure is not None:
            text = o.decoded.text if o.split is None else ""
            ack = await self._store_failed(payload, text, charset, peer, o.failure)
            return ack.encode(charset, errors="replace")
        if alone and (answer := self.commit_now(o, peer)) is not None:
            return answer
        early = None
        if o.single and deliver is not None:

            def early(stored: Stored) -> None:
                if isinstance(stored, Stored):
                    deliver(stored.ack.encode(charset, errors="replace"))

        acks = await self._persist_all(o.prepared, peer, early)
        assert o.split is not None
        text = acks[0] if o.single else self._batch_reply(o.split.header, acks)
        return text.encode(charset, errors="replace")

    async def keep(self, payload: bytes, peer: str, reason: str) -> None:
        """Store bytes that got no answer (junk between frames, a truncated frame)."""
        await self._store_failed(payload, "", "latin-1", peer, HL7Reject(100, reason))

    async def reject_oversize(self, payload: bytes, peer: str) -> bytes:
        """Store the first bytes of an oversized frame and answer AR.

        ``payload`` (what the listener kept) is stored once, as the raw bytes; the
        text column holds only its first segment, which the AR answers (MSA-2).
        """
        limit = self.config.source.max_message_bytes
        error = HL7Reject(207, f"{OVERSIZE_TEXT} of {limit} bytes")
        head = payload[:_HEADER_BYTES].replace(b"\n", b"\r").split(b"\r", 1)[0]
        decoded = decode(head, self.config.source.charset_fallback, False)
        ack = await self._store_failed(payload, decoded.text, decoded.charset, peer, error)
        return ack.encode(decoded.charset, errors="replace")

    async def _persist_all(
        self, prepared: list[Prepared], peer: str, after_commit: Callable[[Stored], None] | None = None
    ) -> list[str]:
        writer = self.db.writer
        futures = [writer.submit_async(Attempt(self.persister, p, peer), after_commit) for p in prepared]
        acks = []
        for p, future in zip(prepared, futures, strict=True):
            try:
                result: Stored | BaseException = await future
            except Exception as exc:
                result = exc
            acks.append(self._answer(p, result))
        return acks

    def _answer(self, p: Prepared, result: Stored | BaseException | None) -> str:
        if isinstance(result, Stored):
            if result.enqueued:
                self.notify()
            if result.ack_code != "AA" and not result.duplicate:
                # The operator's one line per refused message (channel, id, control id, ERR code and location:
                # no patient data): before, an AE or AR left no trace in the log at all.
                log.warning("channel %s: message %s (control id %s) answered %s %s: radbridge messages show %s",
                            self.name, result.message_id, p.message.control_id or "(none)", result.ack_code,
                            result.refusal, result.message_id)
            return result.ack
        if isinstance(result, StoreUnavailable):
            log.error("channel %s: message not stored (%s); answering AE", self.name, result)
        else:
            # The type only: an exception's text may carry the statement's values or message content.
            log.error("channel %s: persisting failed: %s", self.name, type(result).__name__)
        error = HL7Error(207, "application internal error: message not stored, resend later")
        return self.persister.ack(p.message, "AE", error)

    async def _store_failed(self, raw: bytes, text: str, charset: str, peer: str, error: HL7Error) -> str:
        message = Message(text)
        status = REJECTED if error.ack_code == "AR" else ERROR
        prepared = Prepared(message, raw, charset, status, error=error)
        return (await self._persist_all([prepared], peer))[0]

    def _batch_reply(self, header: str, acks: list[str]) -> str:
        now = timestamp(datetime.now(UTC))
        bhs = f"BHS|^~\\&|{self.persister.application}|{self.persister.facility}|||{now}\r"
        return bhs + "".join(acks) + f"BTS|{len(acks)}\r"
