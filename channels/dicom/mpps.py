"""MPPS SCP: N-CREATE / N-SET (PS3.4 F.7; SOP class 1.2.840.10008.3.1.2.3.3).

A thin shell over :mod:`engine.domain.mpps`: each request runs in one
committed writer transaction (the DIMSE success is sent only after the commit,
ARCHITECTURE "durable before acknowledged"); a refused request answers its
failure status and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from sqlalchemy import Connection

from engine.config.models import MppsConfig
from engine.domain.mpps import MppsError, MppsPolicy, create_mpps, set_mpps
from engine.domain.status_message import StatusHeader
from engine.errors import StoreUnavailable
from engine.store.database import Database

__all__ = ["MppsService", "mpps_policy"]

log = logging.getLogger(__name__)

NResult = tuple[int | Dataset, Dataset | None]
_UNABLE = 0x0110


def mpps_policy(cfg: MppsConfig) -> MppsPolicy:
    """The domain's view of ``mpps:``."""
    header = StatusHeader(
        cfg.sending_application, cfg.sending_facility, cfg.receiving_application, cfg.receiving_facility,
        cfg.status_message,
    )  # fmt: skip
    return MppsPolicy(cfg.status_destination, cfg.status_channel, header, cfg.require_type2_attributes)


@dataclass(frozen=True, slots=True)
class MppsService:
    """Applies N-CREATE and N-SET requests to the database."""

    db: Database
    policy: MppsPolicy

    def create(self, uid: str, attributes: Dataset, calling_ae: str) -> NResult:
        """EVT_N_CREATE: (status, attribute list)."""
        now = datetime.now(UTC)

        def create(conn: Connection) -> Dataset:
            return create_mpps(conn, uid, attributes, calling_ae, self.policy, now)

        return self._run(create, uid, with_tags=False)

    def set(self, uid: str, modification: Dataset) -> NResult:
        """EVT_N_SET: (status, the instance's attributes after the change)."""
        now = datetime.now(UTC)
        return self._run(lambda conn: set_mpps(conn, uid, modification, self.policy, now), uid, with_tags=True)

    def _run(self, fn: Callable[[Connection], Dataset], uid: str, with_tags: bool) -> NResult:
        """Run ``fn`` in one writer transaction; ``with_tags``: the response may carry (0000,1005)."""
        try:
            result = self.db.writer.call(fn)
        except MppsError as exc:
            log.info("MPPS %s refused: %s", uid, exc)  # the comment names attributes, never values
            return _status_dataset(exc, with_tags), None
        except StoreUnavailable:
            return _UNABLE, None
        return 0x0000, result


def _status_dataset(exc: MppsError, with_tags: bool) -> Dataset:
    """The failure status with its Error Comment, Error ID and Attribute Identifier List (PS3.7 C.5).

    pynetdicom 3.0's N-CREATE response has no Attribute Identifier List; the comment names the attributes.
    """
    status = Dataset()
    status.Status = exc.status
    status.ErrorComment = exc.comment[:64]
    if exc.error_id is not None:
        status.ErrorID = exc.error_id
    if exc.tags and with_tags:
        status.AttributeIdentifierList = list(exc.tags)
    return status
