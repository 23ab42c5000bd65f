"""Where pynetdicom streams a received C-STORE dataset: a spool file that survives a full disk.

With ``_config.STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each dataset, as
its P-DATA fragments arrive, to a file it creates with
``pynetdicom.dimse_messages.NamedTemporaryFile`` (in the system's temporary
directory). :func:`enable_streamed_receive` replaces that factory with
:class:`SpoolFile`, created in the primary location's ``.incoming`` directory
(emptied at start, so a crash leaves nothing behind), and whose writes never
raise: a write that fails (disk full) is remembered instead, because an
``OSError`` inside pynetdicom's receive path would end the association rather
than let the SCP answer 0xA700. :func:`spool_failure` tells the C-STORE handler.

pynetdicom writes the spool's File Meta Information with pydicom's
``write_file_meta_info``, which raises on an empty Media Storage SOP Class or
Instance UID: a C-STORE-RQ whose Affected SOP Class or Instance UID is empty
(PS3.7 9.3.1.1 makes both mandatory, yet senders leave them empty) would end the
DUL's thread mid-message, the sender would get no answer and the spool would stay.
:func:`enable_streamed_receive` has it written by
:func:`~engine.archive.part10.encode_file_meta` instead, which takes any value, so
the request reaches the C-STORE handler, which refuses it with a status.

**pynetdicom internals**: the factory's name, ``write_file_meta_info`` as
``dimse_messages`` calls it (the file, a ``FileMetaDataset``), and the calls made
on the file (``write``, ``file.flush``, ``close``, ``name``), checked against pynetdicom 3.0
(:data:`TESTED_VERSIONS`); with another version the system default stays and
:func:`enable_streamed_receive` returns False.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pynetdicom
from pynetdicom import _config, dimse_messages

from engine.archive.part10 import encode_file_meta
from engine.archive.spool_budget import SpoolBudget, below_reserve, short_of_reserve
from engine.libc import libc_function

from .admission import RefusalReport

__all__ = ["TESTED_VERSIONS", "SpoolFile", "enable_streamed_receive", "spool_failure"]

log = logging.getLogger(__name__)

TESTED_VERSIONS = ("3.0.",)

_sync_file_range = libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h

_failures: dict[str, OSError] = {}
_lock = threading.Lock()


#: Spool bytes pynetdicom's own receive takes from the calling host's share at a time (as the streamed receive).
HOST_STEP_BYTES = 4 << 20
#: Stores pynetdicom's own receive refused for the host's share: logged once per host a minute.
_HOST_SHARE_REFUSALS = RefusalReport()


class _HostShare:
    """The spool bytes one :class:`SpoolFile` holds of its calling host's ``dicom.max_spool_bytes_per_host``;
    given back once (when the file is closed, after its store, or when it is collected: an association
    aborted mid-data-set drops its file unclosed)."""

    def __init__(self, budget: SpoolBudget, host: str) -> None:
        self.budget = budget
        self.host = host
        self.held = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bool:
        if not self.budget.reserve(self.host, count):
            return False
        with self._lock:
            self.held += count
        return True

    def give_back(self) -> None:
        with self._lock:
            held, self.held = self.held, 0
        if held:
            self.budget.release(self.host, held)


class SpoolFile:
    """A write-only temporary file (``delete=False``) whose write errors are recorded, not raised.

    ``max_bytes``: a write that would make the file longer fails (EFBIG, recorded like any other).
    ``share``: the calling host's spool share (pynetdicom's own receive): the file's bytes are taken from it
    :data:`HOST_STEP_BYTES` at a time; a write it has no room for fails (ENOSPC, recorded: 0xA700).
    """

    def __init__(self, directory: Path, max_bytes: int | None = None, share: _HostShare | None = None) -> None:
        fd, name = tempfile.mkstemp(suffix=".dcm", prefix="rx-", dir=directory)
        self.name = name
        self._out = os.fdopen(fd, "wb")
        self.error: OSError | None = None
        self._max_bytes = max_bytes
        self._written = 0
        self._share = share
        if share is not None:
            weakref.finalize(self, share.give_back)

    @property
    def file(self) -> SpoolFile:
        """pynetdicom flushes through ``.file`` (the attribute of a ``NamedTemporaryFile``)."""
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data``; after a failure, drop it (the dataset is lost anyway)."""
        if self.error is None:
            self._written += len(data)
            if self._max_bytes is not None and self._written > self._max_bytes:
                self._fail(OSError(errno.EFBIG, "the data set is longer than dicom.max_instance_bytes"))
                self._drop()
                return len(data)
            share = self._share
            if share is not None and self._written > share.held and not self._grow(share):
                self._fail(OSError(errno.ENOSPC, "the calling host has dicom.max_spool_bytes_per_host in flight"))
                self._drop()
                return len(data)
            try:
                self._out.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def _grow(self, share: _HostShare) -> bool:
        """Take the next step of the host's share for what was written (never past ``max_bytes``)."""
        step = self._written - share.held + HOST_STEP_BYTES
        if self._max_bytes is not None:
            step = min(step, max(self._max_bytes - share.held, self._written - share.held))
        if share.take(step):
            return True
        count = _HOST_SHARE_REFUSALS.note(share.host, time.monotonic())
        if count is not None:
            log.warning("C-STORE from %s refused, out of resources (%d since the last report): the calling host"
                        " has dicom.max_spool_bytes_per_host in flight", share.host, count)
        return False

    def _drop(self) -> None:
        """Nothing of the data set is kept: the disk, and the host's share, are given back at once."""
        with contextlib.suppress(OSError):
            self._out.truncate(0)
        if self._share is not None:
            self._share.give_back()

    def flush(self) -> None:
        """Hand buffered data to the kernel (no fsync: the archive's copy is the durable one)."""
        if self.error is None:
            try:
                self._out.flush()
            except OSError as exc:
                self._fail(exc)

    def start_writeback(self) -> None:
        """Hand what was written to the kernel and let it start writing it to disk, without waiting.

        ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (Linux): the disk writes overlap the rest of
        the receive, so the fsync that makes the archive file durable finds less to do. Not a
        durability step (metadata is not covered); a no-op where the call is missing.
        """
        self.flush()
        if self.error is None and _sync_file_range is not None:
            _sync_file_range(self._out.fileno(), 0, 0, _SYNC_FILE_RANGE_WRITE)

    def close(self) -> None:
        """Close the file; a failing final flush is recorded like a failing write. Its share of the host's spool
        is given back (pynetdicom closes it once the store is answered)."""
        try:
            self._out.close()
        except OSError as exc:
            self._fail(exc)
        finally:
            if self._share is not None:
                self._share.give_back()

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        with _lock:
            _failures[self.name] = exc


def spool_failure(path: Path) -> OSError | None:
    """The write error of the spool file at ``path``, if there was one (forgotten once asked)."""
    with _lock:
        return _failures.pop(str(path), None)


def _calling_host() -> str:
    """The calling host of the association whose DUL thread is decoding a C-STORE ("" when not one):
    pynetdicom's state machine decodes P-DATA in the DUL's thread, which holds its association."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    requestor = getattr(assoc, "requestor", None)
    return str(getattr(requestor, "address", "") or "")


def _factory(directory: Path, max_bytes: int | None, min_free_bytes: int, budget: SpoolBudget | None) -> Any:
    def make(*args: Any, **kwargs: Any) -> SpoolFile:  # pynetdicom passes delete=False, mode="wb"
        # The setting is process-wide: another pynetdicom SCP in this process (a test's peer) may
        # receive after this location was removed; it then spools to the system's directory.
        host = _calling_host() if budget is not None else ""
        share = _HostShare(budget, host) if budget is not None and host else None
        spool = SpoolFile(directory if directory.is_dir() else Path(tempfile.gettempdir()), max_bytes, share)
        spool.flush()  # nothing yet; a spool that cannot even be created raises here, as before
        if below_reserve(directory, min_free_bytes):  # written to nothing: answered 0xA700
            spool._fail(OSError(errno.ENOSPC, short_of_reserve(directory, min_free_bytes)))
        return spool

    return make


_PREAMBLE_BYTES = 132  # 128 zeros and "DICM": pynetdicom writes them before the File Meta Information


def _write_file_meta(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    """``write_file_meta_info`` for pynetdicom's spool: the group as radbridge encodes it, empty UIDs included."""
    def value(keyword: str) -> str:
        return str(file_meta.get(keyword, "") or "")

    meta = encode_file_meta(value("MediaStorageSOPClassUID"), value("MediaStorageSOPInstanceUID"),
                            value("TransferSyntaxUID"), "")
    fp.write(meta[_PREAMBLE_BYTES:])


def enable_streamed_receive(spool_dir: Path, max_bytes: int | None = None, min_free_bytes: int = 0,
                            budget: SpoolBudget | None = None) -> bool:
    """Stream every received C-STORE dataset into a :class:`SpoolFile` in ``spool_dir`` (process-wide).

    ``max_bytes`` (``dicom.max_instance_bytes``), ``min_free_bytes`` (``archive.min_free_bytes``) and
    ``budget`` (the per-host ledger of ``dicom.max_spool_bytes_per_host``, the one the streamed receive
    uses) bound this path as :mod:`channels.dicom.store_stream` bounds its own: a longer data set, one
    that starts with the file system under the reserve, or one its calling host has no share left for,
    is written to nothing and answered 0xA700 (pynetdicom still reads it to its end).

    False when pynetdicom is not a tested version: datasets are still streamed to a file,
    in the system's temporary directory, and a full disk there ends the association.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    if not pynetdicom.__version__.startswith(TESTED_VERSIONS) or not all(
            hasattr(dimse_messages, name) for name in ("NamedTemporaryFile", "write_file_meta_info")):
        return False
    module: Any = dimse_messages
    module.NamedTemporaryFile = _factory(spool_dir, max_bytes, min_free_bytes, budget)
    module.write_file_meta_info = _write_file_meta
    return True
