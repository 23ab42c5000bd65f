"""SMART Backend Services for one engine process: the authorizer and the routes, wired together.

The HTTP server (channels/fhir) builds one :class:`SmartAuth` at start::

    auth = SmartAuth.from_engine_config(cfg.engine, db)
    app = Starlette(routes=[*auth.routes(), ...fhir routes...])
    principal = auth.authorizer.authenticate(request.headers.get("authorization"))
    auth.authorizer.require(principal, "ImagingStudy", "search")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from starlette.routing import Route

from engine.auth.authorizer import DEVELOPMENT_CLIENT, DevelopmentAuthorizer, SmartAuthorizer
from engine.auth.endpoint import TokenService
from engine.auth.interface import Authorizer
from engine.auth.routes import RESOURCE_TYPES, auth_routes
from engine.auth.tokens import TokenSigner, load_key
from engine.config.models import AuthConfig, EngineConfig
from engine.store.database import Database

__all__ = ["SmartAuth"]

log = logging.getLogger(__name__)


class SmartAuth:
    """The token endpoint and the matching :class:`~engine.auth.interface.Authorizer`."""

    def __init__(self, config: AuthConfig, db: Database, key: bytes, clock: Callable[[], float] = time.time) -> None:
        signer = TokenSigner(key, leeway=config.clock_skew_seconds)
        self.authorizer: Authorizer = SmartAuthorizer(signer)
        if config.unauthenticated_development_mode:
            log.warning("auth.unauthenticated_development_mode is on: the HTTP API serves requests without a token"
                        " (as client %r); never use this with real patient data", DEVELOPMENT_CLIENT)
            self.authorizer = DevelopmentAuthorizer(SmartAuthorizer(signer))
        self.service = TokenService(config, db, signer, clock)

    @classmethod
    def from_engine_config(cls, config: EngineConfig, db: Database) -> SmartAuth:
        """Settings from ``engine.yaml``; the token key from the environment or the data directory."""
        return cls(config.auth, db, load_key(config.data_dir))

    def routes(self, fhir_base: str = "/fhir", token_path: str = "/auth/token",
               resource_types: Sequence[str] = RESOURCE_TYPES) -> list[Route]:
        """``POST token_path`` and ``GET {fhir_base}/.well-known/smart-configuration``."""
        return auth_routes(self.service, fhir_base, token_path, resource_types)
