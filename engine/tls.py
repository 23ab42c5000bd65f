"""TLS contexts for listeners and destinations, from the standard ``ssl`` module."""

from __future__ import annotations

import ssl

from engine.config.models import TLSConfig

__all__ = ["client_context", "server_context"]


def server_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """A server context (TLS 1.2+); mutual TLS when ``require_client_cert``."""
    if tls is None:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("a TLS listener needs cert_file and key_file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        ctx.load_verify_locations(tls.ca_file)
    if tls.require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """A client context; verifies the server unless ``verify_peer`` is false."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify_peer:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx
