"""Starting the FHIR facade inside the engine: the projector, the authorizer and the HTTP listener."""

from __future__ import annotations

import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from starlette.routing import Route

from channels.fhir.access import Gate
from channels.fhir.app import ApiSettings, create_app
from channels.fhir.authorizers import DevelopmentNoAuth, NoAuthorizer
from channels.fhir.server import HttpServer
from engine.audit import current_actor
from engine.auth import Authorizer
from engine.config.models import EngineConfig
from engine.fhir.model import FhirSettings
from engine.fhir.projector import Projector
from engine.fhir.push import PushSubscription
from engine.fhir.settling import StudySettling
from engine.store.database import Database

__all__ = ["authorizer_for", "fhir_settings", "push_subscriptions", "start_http", "start_projector"]

log = logging.getLogger(__name__)


def fhir_settings(cfg: EngineConfig) -> FhirSettings:
    """The resources' settings from engine.yaml."""
    fhir = cfg.http.fhir
    return FhirSettings(ZoneInfo(cfg.timezone), fhir.dicomweb_base, dict(fhir.identifier_systems),
                        fhir.accession_system, fhir.patient_id_system, push_subscriptions(cfg))


def push_subscriptions(cfg: EngineConfig) -> tuple[PushSubscription, ...]:
    """The FHIR push destinations that are on (a ``base_url``): what the projector queues for."""
    return tuple(PushSubscription(d.name, frozenset(d.resource_types), d.ordering_key)
                 for d in cfg.destinations if d.type == "fhir" and d.base_url)


def authorizer_for(mode: str) -> Authorizer:
    """The authorizer of ``http.auth`` when no token service is running: ``development-no-auth``
    serves everybody; anything else refuses every PHI request (401), never serves it unchecked."""
    if mode == "development-no-auth":
        log.warning("http.auth is development-no-auth: the FHIR API serves PHI to anybody; never in production")
        return DevelopmentNoAuth()
    return NoAuthorizer()


def _auth(cfg: EngineConfig, db: Database, authorizer: Authorizer | None) -> tuple[Authorizer, list[Route]]:
    """The authorizer and the extra routes: with ``http.auth: smart``, engine.auth's token endpoint
    (``/auth/token``), ``/fhir/.well-known/smart-configuration`` and the matching bearer-token checks."""
    if authorizer is not None:
        return authorizer, []
    if cfg.http.auth == "smart":
        from engine.auth.smart import SmartAuth

        smart = SmartAuth.from_engine_config(cfg, db)
        return smart.authorizer, smart.routes()
    return authorizer_for(cfg.http.auth), []


async def start_projector(cfg: EngineConfig, db: Database,
                          wake_outbox: Callable[[], None] = lambda: None) -> Projector:
    """Start keeping the stored resources up to date with the domain tables; ``wake_outbox`` after queueing pushes."""
    fhir = cfg.http.fhir
    projector = Projector(db, fhir_settings(cfg), wake_outbox=wake_outbox, settling=StudySettling(
        fhir.imaging_study_settle_seconds, fhir.imaging_study_max_delay_seconds))
    for d in (d for d in cfg.destinations if d.type == "fhir"):
        if d.base_url:
            log.info("FHIR push: %s to %s (%s)", d.name, d.base_url, ", ".join(d.resource_types))
        else:
            log.info("FHIR push destination %s is off: no base_url (RADBRIDGE_EHR_FHIR_BASE unset in the shipped"
                     " configuration); nothing is queued for it", d.name)
    await projector.start()
    return projector


async def start_http(cfg: EngineConfig, db: Database, authorizer: Authorizer | None) -> HttpServer:
    """Bind and serve the FHIR API on ``http.host:http.port``; OSError if the port cannot be bound."""
    http = cfg.http
    chosen, auth_routes = _auth(cfg, db, authorizer)
    gate = Gate(chosen, db, current_actor())
    settings = ApiSettings(ZoneInfo(cfg.timezone), http.public_base_url,
                           max_search_body_bytes=http.max_request_head_bytes)
    server = HttpServer(http, create_app(db, gate, settings, auth_routes))
    await server.start()
    log.info("FHIR R4 API listening on %s:%s%s at /fhir (auth: %s)", http.host, server.port,
             " with TLS" if http.tls else "", http.auth)
    return server
