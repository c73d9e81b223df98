"""Who may call what on the operator-facing services (``Operator``, ``Detections``).

:class:`OperatorAccess` is a server interceptor: for every call of those services it identifies the caller
(``authorization: Bearer TOKEN`` metadata, else a client certificate mapped to an operator under mutual TLS,
else open access when explicitly enabled), refuses with ``UNAUTHENTICATED`` or, when the method needs a higher
role, ``PERMISSION_DENIED``, and hands the servicer a context that carries the caller's :class:`Identity`. The
servicers then make the checks that need the request (quality, camera lists) with :meth:`OperatorAccess.require`
before they look anything up. ``EdgeLink`` authenticates cameras itself (token in the Hello) and is passed
through; health and reflection are open unless configured otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import grpc

from icmh.rpc import detections_pb2, edge_pb2, operator_pb2
from icmh.service.grpc_setup import bearer_token

from .auth import OPEN_ACCESS, Identity, OperatorRegistry, Role
from .metrics import CloudMetrics

log = logging.getLogger("icmh.cloud.access")


def _service(module: Any, name: str) -> str:
    return module.DESCRIPTOR.services_by_name[name].full_name


OPERATOR, DETECTIONS, EDGE_LINK = (_service(operator_pb2, "Operator"), _service(detections_pb2, "Detections"),
                                   _service(edge_pb2, "EdgeLink"))
HEALTH = "grpc.health.v1.Health"
REFLECTION = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")
#: role a method needs before its request is looked at; methods not listed need ADMIN
METHOD_ROLES: dict[str, Role] = {
    f"/{OPERATOR}/ListCameras": Role.VIEWER,
    f"/{OPERATOR}/ListFrames": Role.VIEWER,
    f"/{OPERATOR}/GetFrame": Role.VIEWER,  # HUMAN / ORIGINAL need INSPECTOR: checked on the request
    f"/{OPERATOR}/ConfigureCamera": Role.ADMIN,
    f"/{OPERATOR}/ListAudit": Role.ADMIN,
    f"/{DETECTIONS}/Subscribe": Role.VIEWER,
}
#: role of every method of a service that is not open (``--auth-health``, ``--reflection operators``)
SERVICE_ROLES: dict[str, Role] = {name: Role.VIEWER for name in (HEALTH, *REFLECTION)}
_HANDLER_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class CallerContext:
    """The servicer context of an admitted call, with the caller's identity (everything else delegated)."""

    def __init__(self, context: grpc.ServicerContext, identity: Identity) -> None:
        self._context, self.identity = context, identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


def certificate_names(context: grpc.ServicerContext) -> list[str]:
    """Common name and subject alternative names of the client certificate gRPC verified (empty without one)."""
    auth = context.auth_context()
    names = [*auth.get("x509_common_name", []), *auth.get("x509_subject_alternative_name", [])]
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


def refusal(identity: Identity, role: Role, camera_id: str | None = None) -> str | None:
    """Why ``identity`` may not act with ``role`` (on ``camera_id``), or None when it may."""
    if identity.role < role:
        return f"{identity.describe()} has role {identity.role.label}; this needs {role.label}"
    if camera_id is not None and not identity.may_see(camera_id):
        return f"{identity.describe()} may not access camera {camera_id!r}"
    return None


class OperatorAccess(grpc.ServerInterceptor):
    """Authentication and role checks of the operator-facing services (see the module docstring)."""

    def __init__(self, operators: OperatorRegistry, metrics: CloudMetrics, *, open_access: bool = False,
                 certificates: bool = False, open_services: Iterable[str] = (HEALTH, *REFLECTION)) -> None:
        """``certificates``: accept client-certificate identities (only when the server verifies client
        certificates, i.e. mutual TLS); ``open_services``: services that need no credentials."""
        self.operators, self.metrics = operators, metrics
        self.open_access, self.certificates = open_access, certificates
        self.open_services = frozenset((EDGE_LINK, *open_services))

    # -- interceptor -----------------------------------------------------------------------------------------
    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        service = method[1:].partition("/")[0]
        handler = continuation(handler_call_details)
        if handler is None or service in self.open_services:
            return handler
        role = METHOD_ROLES.get(method, SERVICE_ROLES.get(service, Role.ADMIN))
        for kind, make in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(self._guard(behavior, method, role), request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler

    def _guard(self, behavior: Callable[[Any, Any], Any], method: str, role: Role) -> Callable[[Any, Any], Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            identity = self.identify(context)
            reason = refusal(identity, role)
            if reason is not None:
                self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, f"{method}: {reason}")
            return behavior(request, CallerContext(context, identity))

        return guarded

    # -- authentication --------------------------------------------------------------------------------------
    def identify(self, context: grpc.ServicerContext) -> Identity:
        """The caller, from its bearer token or client certificate; aborts ``UNAUTHENTICATED`` otherwise."""
        if self.open_access:
            return OPEN_ACCESS
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if len(values) > 1:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header")
        if values:
            token = bearer_token(str(values[0]))
            if token is None:
                self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                             "authorization metadata must be 'Bearer TOKEN'")
            identity = self.operators.by_token(token)
            if identity is None:
                log.warning("wrong operator token from %s", context.peer())
                self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unknown operator token")
            return identity
        names = certificate_names(context) if self.certificates else []
        if names:
            identity = self.operators.by_certificate(names)
            if identity is None:
                self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                             f"client certificate {names[0]!r} is not an operator identity")
            return identity
        hint = "" if len(self.operators) else " (this server has no operator configured: see --operator)"
        self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                     f"operator credentials required: send metadata 'authorization: Bearer TOKEN'{hint}")

    # -- per-request checks (servicers) ----------------------------------------------------------------------
    @staticmethod
    def caller(context: grpc.ServicerContext) -> Identity:
        """The identity the interceptor attached; a context without one (interceptor missing) is refused."""
        identity = getattr(context, "identity", None)
        if not isinstance(identity, Identity):
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "call not authenticated")
        return identity

    def require(self, context: grpc.ServicerContext, role: Role, camera_id: str | None = None) -> Identity:
        """The caller, when it has ``role`` and may access ``camera_id``; aborts ``PERMISSION_DENIED`` otherwise."""
        identity = self.caller(context)
        reason = refusal(identity, role, camera_id)
        if reason is not None:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, reason)
        return identity

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
        self.metrics.auth_refusals.labels(code.name.lower()).inc()
        abort(context, code, message)
