"""Logging setup: text or JSON lines. Below DEBUG, log output carries ids, never PHI or secrets.

Call sites log ids (message row ids, control ids, channel names), never names,
birth dates, patient ids, accession numbers or message text. Two things a call
site does not control are guarded here, in the formatter, for every logger
(the engine's and third-party ones alike):

* **Exception text.** A database error's message can carry the statement's
  parameters (PostgreSQL's ``DETAIL: Key (mrn)=(…)``), a parser error the
  offending value, a receiver's answer the patient it refused. Unless the
  configured level is DEBUG, a logged traceback keeps its frames and exception
  types but withholds every message, and an exception passed as a ``%s``/``%r``
  argument is rendered as its type name. Messages of the types in
  :data:`SAFE_MESSAGE_TYPES`, which radbridge or the driver build from no data,
  and of OSErrors that name no file, are kept.
* **Passwords in URLs.** ``scheme://user:secret@host`` becomes
  ``scheme://user:***@host`` in every line, at every level.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import sys
import threading
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from engine.errors import AlreadyRunning, ConfigError, StoreUnavailable

__all__ = ["SAFE_MESSAGE_TYPES", "PHISafeFormatter", "configure_logging", "mask_url_passwords"]

#: Exception types whose message is built from no message or patient data, kept in logs.
#: sqlite3's own errors name tables and columns, never bound values (unlike PostgreSQL's
#: DETAIL lines); the radbridge errors listed are worded from configuration and paths only.
SAFE_MESSAGE_TYPES: tuple[type[BaseException], ...] = (
    AlreadyRunning, ConfigError, StoreUnavailable, sqlite3.Error, ConnectionError, TimeoutError,
)

#: Loggers that put exception reprs into the message text itself; below DEBUG only their
#: first line is kept (asyncio's "Task exception was never retrieved" lists
#: ``exception=ValueError('<the value>')`` on the lines after it).
FIRST_LINE_ONLY: frozenset[str] = frozenset({"asyncio"})

#: Loggers whose text quotes data values (pydicom: "Invalid value for VR DA: '<birth date>'";
#: Python warnings, which pydicom also raises with the value, routed here by
#: configure_logging): below DEBUG only the source location and category are kept.
VALUE_QUOTING: frozenset[str] = frozenset({"pydicom", "py.warnings"})
_WARNING_HEAD = re.compile(r"^(?P<head>.*?:\d+: \w+):")

_WITHHELD = "<message withheld below DEBUG: may carry PHI>"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def mask_url_passwords(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``, anywhere in ``text``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def _safe(exc: BaseException) -> bool:
    """Known to be worded without data: a listed type, or an OSError naming no file
    ("[Errno 98] Address already in use"; a file name may be an archive path built from ids)."""
    if isinstance(exc, SAFE_MESSAGE_TYPES):
        return True
    return isinstance(exc, OSError) and exc.filename is None and exc.filename2 is None


def _describe(exc: BaseException) -> str:
    name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    return f"{name}: {exc}" if _safe(exc) else f"{name}: {_WITHHELD}"


def _chain(exc: BaseException) -> list[tuple[BaseException, str]]:
    """``exc`` and its causes/contexts, oldest first, each with the line that links it to the next."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    link = ""
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "The above exception was the direct cause of the following exception:"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "During handling of the above exception, another exception occurred:"
        else:
            current = None
    return list(reversed(chain))


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` (and its chain) with frames and types but no exception messages."""
    parts: list[str] = []
    chain = _chain(exc)
    for index, (item, _) in enumerate(chain):
        if index:
            parts.append(f"\n\n{chain[index - 1][1]}\n\n")
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        parts.append(_describe(item))
        if isinstance(item, BaseExceptionGroup):
            parts.extend(f"\n  +- {_describe(sub)}" for sub in item.exceptions)
    return "".join(parts)


class PHISafeFormatter(logging.Formatter):
    """Formats records as text or JSON; ``redact`` (any level above DEBUG) withholds exception text.

    Passwords in URLs are masked whatever ``redact`` says.
    """

    def __init__(self, json_lines: bool = False, redact: bool = True) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        message = self._message(record)
        exception = self._exception(record)
        if self.json_lines:
            entry = {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            }
            if exception:
                entry["exception"] = exception
            return mask_url_passwords(json.dumps(entry))
        record.message = message
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if exception:
            text = f"{text}\n{exception}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return mask_url_passwords(text)

    def _message(self, record: logging.LogRecord) -> str:
        if not self.redact:
            return record.getMessage()
        args: Any = record.args
        if isinstance(args, tuple):
            args = tuple(_arg(a) for a in args)
        elif isinstance(args, dict):
            args = {k: _arg(v) for k, v in args.items()}
        message = str(record.msg) % args if args else str(record.msg)
        top = record.name.split(".")[0]
        if top in FIRST_LINE_ONLY:
            message = message.split("\n", 1)[0]
        if top in VALUE_QUOTING or record.name in VALUE_QUOTING:
            head = _WARNING_HEAD.match(message)
            message = f"{head.group('head') + ': ' if head else ''}{_WITHHELD}"
        return message

    def _exception(self, record: logging.LogRecord) -> str:
        # Computed here every time: record.exc_text may hold another handler's unredacted text.
        if record.exc_info and record.exc_info[1] is not None:
            if self.redact:
                return redacted_traceback(record.exc_info[1])
            return self.formatException(record.exc_info)
        return ""


def _arg(value: Any) -> Any:
    """An exception argument becomes its type name unless its type is known to be safe."""
    if isinstance(value, BaseException) and not _safe(value):
        return f"{type(value).__name__} ({_WITHHELD})"
    return value


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread goes through the formatter (the default prints it raw)."""
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("engine.threads").error("thread %s ended by an exception", name,
                                              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class _Expected(logging.Filter):
    """Third-party lines for events radbridge expects and reports itself are kept for DEBUG:

    * apscheduler's WARNING 'Execution of job ... skipped: maximum number of running instances':
      radbridge's jobs run one at a time on purpose (``max_instances=1``), so a run still going at its
      next tick (a correction of 1,000 images, a fixity pass over S3) is expected, and was a warning
      every few seconds for as long as it ran. A job that fails still logs its error.
    * pynetdicom's two ERROR lines for an outgoing connection refused or timed out ('Association
      request failed: unable to connect to remote', 'TCP Initialisation Error: ...'): the outbox
      retries, and logs each attempt once with its reason (a PACS down all night was three lines a
      retry, two of them ERRORs).
    * pynetdicom's ERROR 'No accepted presentation contexts' for an outgoing association the peer
      accepted with no context (a PACS that takes no JPEG 2000): the outbox logs that dead letter with
      the SOP class and transfer syntax refused.
    """

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefixes):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_EXPECTED = {
    "apscheduler.scheduler": _Expected('Execution of job "%s" skipped: maximum number of running'),
    "pynetdicom.transport": _Expected("Association request failed: unable to connect to remote",
                                      "TCP Initialisation Error"),
    "pynetdicom.acse": _Expected("No accepted presentation contexts"),
}


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send logs (warnings and uncaught thread exceptions too) to stderr; exception text only at DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    numeric = logging.getLevelName(level)
    handler.setFormatter(PHISafeFormatter(json_lines=fmt == "json", redact=numeric > logging.DEBUG))
    # A log call whose arguments do not fit its format would have logging print both, raw, to stderr.
    logging.raiseExceptions = numeric <= logging.DEBUG
    logging.captureWarnings(True)  # else the warnings module prints them to stderr, unformatted
    threading.excepthook = _log_thread_exception
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "apscheduler", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    for name, expected in _EXPECTED.items():
        if expected not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(expected)
