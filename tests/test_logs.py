"""The log formatter: no exception text below DEBUG, no password in any URL, at any level."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest

from engine.errors import StoreUnavailable
from engine.logs import PHISafeFormatter, configure_logging, mask_url_passwords

PHI = "ZZPHINAME^QQSECRET 19230417 PHIID98765"


def _raise_chained() -> None:
    try:
        raise KeyError(f"inner {PHI}")
    except KeyError as exc:
        raise ValueError(f"outer {PHI}") from exc


def _emit(formatter: PHISafeFormatter, emit: Callable[[logging.Logger], None], name: str = "engine.test") -> str:
    """What ``emit`` logs through ``formatter``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def _logged_exception(formatter: PHISafeFormatter) -> str:
    def emit(logger: logging.Logger) -> None:
        try:
            _raise_chained()
        except ValueError:
            logger.exception("handler failed on message %s", 42)

    return _emit(formatter, emit)


def test_a_traceback_below_debug_keeps_frames_and_types_but_no_exception_text() -> None:
    text = _logged_exception(PHISafeFormatter(redact=True))

    assert "handler failed on message 42" in text
    assert "KeyError" in text and "ValueError" in text and "_raise_chained" in text
    assert "direct cause" in text
    assert "ZZPHINAME" not in text and "PHIID98765" not in text


def test_a_traceback_at_debug_is_complete() -> None:
    text = _logged_exception(PHISafeFormatter(redact=False))

    assert f"outer {PHI}" in text and f"inner {PHI}" in text


def test_json_lines_withhold_exception_text_too() -> None:
    text = _logged_exception(PHISafeFormatter(json_lines=True, redact=True))

    entry = json.loads(text)
    assert "ValueError" in entry["exception"]
    assert "PHIID98765" not in text


def test_an_exception_argument_is_logged_as_its_type() -> None:
    text = _emit(PHISafeFormatter(redact=True),
                 lambda lg: lg.warning("refused: %s / %r", ValueError(PHI), KeyError(PHI)))

    assert "refused: ValueError" in text and "KeyError" in text
    assert "PHIID98765" not in text


def test_messages_of_safe_types_are_kept() -> None:
    text = _emit(PHISafeFormatter(redact=True),
                 lambda lg: lg.error("%s / %s", StoreUnavailable("database unavailable: OperationalError"),
                                          sqlite3.OperationalError("disk I/O error")))

    assert "database unavailable: OperationalError / disk I/O error" in text


def test_asyncio_keeps_only_the_first_line_below_debug() -> None:
    message = f"Task exception was never retrieved\nfuture: <Task exception=ValueError('{PHI}')>"
    text = _emit(PHISafeFormatter(redact=True), lambda lg: lg.error(message), name="asyncio")

    assert "Task exception was never retrieved" in text
    assert "PHIID98765" not in text


@pytest.mark.parametrize("redact", [True, False])
@pytest.mark.parametrize("json_lines", [True, False])
def test_passwords_in_urls_are_masked_at_every_level(redact: bool, json_lines: bool) -> None:
    url = "postgresql+psycopg://radbridge:s3cr3t-Pw@db.example:5432/radbridge"
    text = _emit(PHISafeFormatter(json_lines=json_lines, redact=redact),
                 lambda lg: lg.debug("connecting to %s", url))

    assert "s3cr3t" not in text
    assert "postgresql+psycopg://radbridge:***@db.example:5432/radbridge" in text


@pytest.mark.parametrize("text, masked", [
    ("https://user:pw@host/path", "https://user:***@host/path"),
    ("redis://:only-password@host", "redis://:***@host"),
    ("http://host:8080/a@b", "http://host:8080/a@b"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
])
def test_mask_url_passwords(text: str, masked: str) -> None:
    assert mask_url_passwords(text) == masked


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, threading.excepthook
    yield
    threading.excepthook = hook
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("level, redacts", [("INFO", True), ("WARNING", True), ("DEBUG", False)])
def test_configure_logging_redacts_at_every_level_above_debug(restore_root_logging: None, level: str,
                                                              redacts: bool) -> None:
    configure_logging(level)

    formatter = logging.getLogger().handlers[0].formatter
    assert isinstance(formatter, PHISafeFormatter) and formatter.redact is redacts


def test_pydicom_messages_quoting_values_are_withheld_below_debug() -> None:
    text = _emit(PHISafeFormatter(redact=True), lambda lg: lg.warning("Invalid value for VR DA: '19230417-1'"),
                 name="pydicom")

    assert "19230417" not in text and "pydicom" in text


def test_python_warnings_go_through_the_formatter(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"Invalid value for VR PN: '{PHI}'", UserWarning, stacklevel=1)

    assert "UserWarning" in stream.getvalue() and "test_logs.py" in stream.getvalue()
    assert "PHIID98765" not in stream.getvalue()


def test_an_exception_ending_a_thread_goes_through_the_formatter(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]

    def fail() -> None:
        raise ValueError(PHI)

    thread = threading.Thread(target=fail, name="radbridge-test")
    thread.start()
    thread.join()

    assert "thread radbridge-test ended by an exception" in stream.getvalue()
    assert "ValueError" in stream.getvalue() and "PHIID98765" not in stream.getvalue()


def test_a_log_call_with_mismatched_arguments_does_not_print_them(restore_root_logging: None,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    try:
        logging.getLogger("engine.test").info("patient %d", PHI)
    finally:
        logging.raiseExceptions = True

    assert "PHIID98765" not in capsys.readouterr().err


def test_an_os_error_naming_no_file_keeps_its_message() -> None:
    text = _emit(PHISafeFormatter(redact=True), lambda lg: lg.error(
        "%s / %s", OSError(98, "Address already in use"), FileNotFoundError(2, "No such file", f"/a/{PHI}")))

    assert "[Errno 98] Address already in use" in text
    assert "FileNotFoundError" in text and "PHIID98765" not in text


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_job_run_skipped_because_the_last_one_still_runs_is_not_a_warning(restore_root_logging: None,
                                                                           level: str) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from engine.domain.housekeeping import Job, schedule_jobs

    stream = io.StringIO()
    configure_logging(level)
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    running = threading.Event()

    def slow() -> int:  # a run that outlasts its interval (a correction of many images)
        running.set()
        time.sleep(1.0)
        return 0

    scheduler = BackgroundScheduler()
    schedule_jobs(scheduler, [Job("slow-job", "a slow job", 0.1, slow)])
    scheduler.start()
    try:
        assert running.wait(5)
        time.sleep(0.6)
    finally:
        scheduler.shutdown(wait=True)

    skipped = [line for line in stream.getvalue().splitlines() if "maximum number of running instances" in line]
    if level == "INFO":
        assert skipped == []
    else:  # still there for whoever debugs the scheduler, as DEBUG
        assert skipped and all("DEBUG" in line for line in skipped)
    assert "WARNING" not in stream.getvalue()


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_an_outgoing_connection_refused_is_not_two_pynetdicom_errors(restore_root_logging: None,
                                                                     level: str) -> None:
    """The outbox retries a PACS that is down and logs each attempt with its reason; pynetdicom's own two
    ERROR lines for every retry (new-user campaign) are kept for DEBUG."""
    from pynetdicom import AE

    from tests.conftest import free_port

    stream = io.StringIO()
    configure_logging(level)
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 5
    assert not ae.associate("127.0.0.1", free_port(), ae_title="PACS").is_established

    lines = [line for line in stream.getvalue().splitlines() if "pynetdicom" in line]
    assert "ERROR" not in stream.getvalue()
    if level == "DEBUG":
        assert any("unable to connect to remote" in line and "DEBUG" in line for line in lines)
    else:
        assert lines == []


def test_an_outgoing_association_with_no_accepted_context_is_not_a_pynetdicom_error(
        restore_root_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PACS that accepts none of the contexts of an image (a JPEG 2000 one for a PACS that takes only
    uncompressed): pynetdicom logged ERROR 'No accepted presentation contexts' beside the outbox's own
    WARNING that names the refused SOP class and syntax (new-user campaign); kept for DEBUG."""
    from pynetdicom import AE, _config

    from tests.conftest import free_port

    # radbridge's storage SCP, once any test started one in this process, accepts every storage class
    # (channels.dicom.storage sets pynetdicom's UNRESTRICTED_STORAGE_SERVICE): this PACS must not
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", False)

    stream = io.StringIO()
    configure_logging("INFO")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    port = free_port()
    scp = AE(ae_title="PACS")
    scp.add_supported_context("1.2.840.10008.1.1")  # Verification only
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        scu = AE()
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.91")  # CT, JPEG 2000
        scu.acse_timeout = scu.network_timeout = 5
        assert not scu.associate("127.0.0.1", port, ae_title="PACS").is_established
    finally:
        server.shutdown()

    assert "No accepted presentation contexts" not in stream.getvalue()
    assert "ERROR" not in stream.getvalue()
