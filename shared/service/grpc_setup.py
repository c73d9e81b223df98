"""gRPC channel and server options (message sizes, keepalive), TLS credentials and operator bearer tokens."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import grpc

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * MIB
#: a PNG of a large frame can be bigger than any layer: replies may use this much
MAX_REPLY_BYTES = 64 * MIB

_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def channel_options(max_send_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_receive_bytes: int = MAX_REPLY_BYTES,
                    server_name: str | None = None) -> list[tuple[str, object]]:
    """Client options: explicit message size limits and keepalive pings (to notice dead links)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.max_receive_message_length", max_receive_bytes),
        *_KEEPALIVE,
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def server_options(max_receive_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                   max_send_bytes: int = MAX_REPLY_BYTES) -> list[tuple[str, object]]:
    """Server options: explicit message size limits; accept the clients' keepalive pings."""
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        *_KEEPALIVE,
    ]


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(cert: str | Path, key: str | Path,
                       client_ca: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS for a server; with ``client_ca`` clients must present a certificate it signed (mutual TLS)."""
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    ca = _read(client_ca, "client CA")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata of an operator token (``authorization: Bearer TOKEN``); empty without a token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def bearer_token(authorization: str) -> str | None:
    """The token of an ``authorization`` value ``Bearer TOKEN`` (scheme in any case); None for anything else."""
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class _CallDetails(collections.namedtuple("_CallDetails", "method timeout metadata credentials wait_for_ready "
                                                          "compression"), grpc.ClientCallDetails):
    pass


class _AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata to every call of a channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(d.method, d.timeout, (*(d.metadata or ()), *self.metadata), d.credentials,
                            d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation: Any, details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    intercept_stream_stream = intercept_stream_unary


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """``channel`` sending ``token`` as ``authorization: Bearer TOKEN`` with every call (unchanged without one)."""
    return grpc.intercept_channel(channel, _AddMetadata(bearer_metadata(token))) if token else channel


def open_channel(target: str, *, ca: str | Path | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None, server_name: str | None = None,
                 max_send_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, token: str | None = None) -> grpc.Channel:
    """Insecure channel, or TLS when ``ca`` is given (``cert`` + ``key``: client certificate for mutual TLS);
    ``token``: operator token sent with every call. A server name override needs TLS."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    options = channel_options(max_send_bytes=max_send_bytes, server_name=server_name)
    if ca is None and cert is None:
        if server_name:
            raise ValueError("--tls-server-name needs TLS (--tls-ca)")
        return with_token(grpc.insecure_channel(target, options=options), token)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "TLS CA"), private_key=_read(key, "TLS key"),
        certificate_chain=_read(cert, "TLS certificate"),
    )
    return with_token(grpc.secure_channel(target, credentials, options=options), token)
