"""Transport security and credentials, the same for every service and client.

- TLS: a server with a certificate and key; clients trust its CA.
- Mutual TLS: the server also requires a client certificate signed by its CA.
- Bearer tokens: the token of service S lives in $HATCHERY_<S>_TOKEN on the
  server and on its clients; servers check it (health checks exempt, so
  Kubernetes probes need no secret) and clients send it. The optimizer's
  run-control calls take a token of their own, $HATCHERY_CONTROL_TOKEN, so a
  worker's token cannot pause or stop a run (an Access per method). Tokens are
  read from the environment only, so they never appear in flags, configs, logs
  or status.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

TOKEN_ENV = {"optimizer": "HATCHERY_OPTIMIZER_TOKEN", "inference": "HATCHERY_INFERENCE_TOKEN",
             "reward": "HATCHERY_REWARD_TOKEN", "control": "HATCHERY_CONTROL_TOKEN"}
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def service_token(service: str) -> str:
    """The bearer token of a Hatchery service from the environment; empty: none."""
    return os.environ.get(TOKEN_ENV[service], "")


@dataclass(frozen=True)
class Tls:
    """PEM files. `cert`/`key` are this process's identity: served, and shown to servers
    that require client certificates. `ca` verifies peers: servers when connecting,
    clients when `require_client_cert` is set."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    require_client_cert: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    def check(self) -> Tls:
        """Refuses an incomplete or unreadable setting before anything starts."""
        if bool(self.cert) != bool(self.key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.require_client_cert and not (self.ca and self.cert):
            raise ValueError("--tls-require-client-cert needs --tls-cert, --tls-key and --tls-ca (the clients' CA)")
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{flag}: cannot read {path}")
        return self

    def _read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self._read(self.key), self._read(self.cert))],
                                           root_certificates=self._read(self.ca),
                                           require_client_auth=self.require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self._read(self.ca), private_key=self._read(self.key),
                                            certificate_chain=self._read(self.cert))


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that only aborts."""

    def abort(request, context):
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


@dataclass(frozen=True)
class Access:
    """The bearer tokens each method takes: `methods` by full name ("/pkg.Service/Method"),
    `default` for every other. None: no token needed; an empty tuple: refused, with `why`."""

    default: tuple[str, ...] | None
    methods: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    why: Mapping[str, str] = field(default_factory=dict)  # method -> what refusing it should say

    @classmethod
    def single(cls, token: str) -> Access:
        return cls((token,) if token else None)

    @property
    def open(self) -> bool:
        return self.default is None and all(t is None for t in self.methods.values())


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Every call but health checks must carry `authorization: Bearer <token>` with a token its
    method takes (Access); compared in constant time."""

    def __init__(self, access: Access):
        self._access = access

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        accepted = self._access.methods.get(details.method, self._access.default)
        if accepted is None:
            return handler
        given = dict(details.invocation_metadata).get("authorization")
        if given is None and accepted:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing bearer token: send metadata 'authorization: Bearer <token>'")
        if not any(hmac.compare_digest(str(given).encode(), f"Bearer {t}".encode()) for t in accepted):
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            self._access.why.get(details.method, "wrong bearer token"))
        return handler


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]):
        self.method, self.timeout, self.credentials = details.method, details.timeout, details.credentials
        self.wait_for_ready, self.compression = details.wait_for_ready, details.compression
        self.metadata = metadata


class BearerTokenClient(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details, [*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)
