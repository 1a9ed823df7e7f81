"""What every Hatchery gRPC server and client shares: health, reflection,
message size limits, port files and channel options."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hatchery.service.metrics import GrpcMetricsInterceptor
from hatchery.service.security import Access, BearerTokenClient, BearerTokenInterceptor, Tls

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # deliberate: a held-out batch of long completions fits, a model does not
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


class _Undecodable:
    """What a request that is not a valid message decodes to, so the servicer can refuse it."""

    def __init__(self, size: int):
        self.size = size


class UndecodableRequestInterceptor(grpc.ServerInterceptor):
    """INVALID_ARGUMENT, naming the method, for a unary request whose bytes are not a valid message
    (grpc's own answer is INTERNAL, "Exception deserializing request!")."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode, method = handler.request_deserializer, details.method

        def lenient(data: bytes):
            try:
                return decode(data)
            except Exception:  # protobuf's DecodeError, or anything a generated parser raises
                return _Undecodable(len(data))

        def refuse(request, context) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request to {method} is not a valid message ({request.size} bytes)")

        if handler.unary_unary:
            def unary(request, context):
                return refuse(request, context) if isinstance(request, _Undecodable) \
                    else handler.unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, lenient, handler.response_serializer)

        def stream(request, context):
            if isinstance(request, _Undecodable):
                refuse(request, context)
            yield from handler.unary_stream(request, context)

        return grpc.unary_stream_rpc_method_handler(stream, lenient, handler.response_serializer)


class Server:
    """A grpc.Server with health checking and reflection for the given services,
    TLS when given a certificate, and a bearer-token check when given a token (one for
    every method) or an Access (tokens per method)."""

    def __init__(self, service_names: Iterable[str], host: str = "127.0.0.1", port: int = 0, max_workers: int = 8,
                 token: str | None = None, tls: Tls | None = None, access: Access | None = None):
        access = access or Access.single(token or "")
        interceptors = [GrpcMetricsInterceptor(), *([] if access.open else [BearerTokenInterceptor(access)]),
                        UndecodableRequestInterceptor()]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=CHANNEL_OPTIONS,
                                interceptors=interceptors)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            self.service_names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                  reflection.SERVICE_NAME], self.grpc)
        if tls and tls.cert:
            self.port = self.grpc.add_secure_port(f"{host}:{port}", tls.server_credentials())
        else:
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind {host}:{port}")
        self.address = f"{host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in [""] + self.service_names:
            self.health.set(name, status)

    def start(self, port_file: str | None = None, serving: bool = True) -> None:
        self.grpc.start()
        self.set_serving(serving)
        if port_file:
            write_port_file(Path(port_file), self.port)

    def stop(self, grace: float = 1.0) -> None:
        self.set_serving(False)
        self.grpc.stop(grace).wait()


def write_port_file(path: Path, port: int) -> None:
    """Atomically, so a reader never sees a half-written number."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, path)


def channel(address: str, tls: Tls | None = None, token: str = "") -> grpc.Channel:
    """A channel with TLS when `tls` is enabled, sending `token` as a bearer token when given."""
    if tls and tls.enabled:
        ch = grpc.secure_channel(address, tls.channel_credentials(), options=CHANNEL_OPTIONS)
    else:
        ch = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.intercept_channel(ch, BearerTokenClient(token)) if token else ch


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a clean shutdown of a service's main loop."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def invalid_argument_on_value_error(fn: Callable) -> Callable:
    """Servicer methods raise ValueError for bad requests; the client sees INVALID_ARGUMENT."""

    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
