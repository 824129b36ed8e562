"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``, as Triton and KServe speak
it) over the same :class:`~mlaas4hep_lab.serving.service.Service` as the HTTP routes: same store, batching,
tokens, statistics and metrics, so ``tritonclient.grpc`` works unchanged against ``mlaas4hep serve --grpc-port``.

It runs with ``grpc.aio`` on the event loop uvicorn runs (uvloop when installed; grpc.aio works on it), started
and stopped by the app's lifespan (:func:`start`). With ``--workers N`` every worker process binds the same port
(SO_REUSEPORT) and the kernel spreads the connections over them, as it does for HTTP.

Every call needs a token in the ``authorization`` metadata (``Bearer TOKEN``; tritonclient sends it with
``headers={"authorization": "Bearer TOKEN"}``) except ServerLive and ServerReady, the health checks. Errors are
the HTTP routes' messages with the gRPC code of their status (:data:`CODES`); shared memory and tracing are
UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mlaas4hep_lab.errors import MissingExtraError, MLaaSError
from mlaas4hep_lab.serving import BadRequest, ServingError, triton
from mlaas4hep_lab.serving import schemas as S
from mlaas4hep_lab.serving.grpc.protocol import (
    SERVICE,
    M,
    from_dict,
    infer_call,
    infer_response,
    parameters_of,
)

try:
    import grpc
    from google.protobuf import message_factory
except ImportError as err:  # pragma: no cover - grpcio is in the serve extra
    raise MissingExtraError(f"the gRPC service needs grpcio ({err}); install it with: "
                            'pip install "mlaas4hep-lab[serve]"') from err

__all__ = ["start", "InferenceServicer", "CODES"]

log = logging.getLogger("mlaas4hep_lab.serving")
StatusCode = grpc.StatusCode

# the HTTP status of the package's errors -> the gRPC code that says the same
CODES = {400: StatusCode.INVALID_ARGUMENT, 401: StatusCode.UNAUTHENTICATED, 403: StatusCode.PERMISSION_DENIED,
         404: StatusCode.NOT_FOUND, 409: StatusCode.FAILED_PRECONDITION, 413: StatusCode.RESOURCE_EXHAUSTED,
         422: StatusCode.INVALID_ARGUMENT, 429: StatusCode.RESOURCE_EXHAUSTED, 501: StatusCode.UNIMPLEMENTED,
         503: StatusCode.UNAVAILABLE, 504: StatusCode.DEADLINE_EXCEEDED, 507: StatusCode.RESOURCE_EXHAUSTED}
STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream scored at once (answered in order)
GRACE_SECONDS = 3.0  # how long stop() lets calls in flight finish


def status_of(exc: BaseException, route: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message of an exception raised while answering ``route``; an unexpected one is
    logged and answered INTERNAL with a short message (the service keeps running)."""
    if isinstance(exc, MLaaSError):  # ServingError, AuthError, the engine's errors: they carry a status
        status = getattr(exc, "status", 400)
        code = CODES.get(status) or (StatusCode.INVALID_ARGUMENT if status < 500 else StatusCode.INTERNAL)
        return code, str(exc)
    log.error("unexpected error on gRPC %s", route, exc_info=exc)
    return StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the service keeps running"


def _unimplemented(message: str):
    async def work(request, user):
        raise ServingError(message, 501)
    return work


class InferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService`` over ``svc``: each a coroutine ``(request, user)`` that
    returns the response message; :meth:`unary` and :meth:`stream_infer` add auth, error codes and metrics,
    :meth:`handlers` puts them on the wire."""

    def __init__(self, svc):
        self.svc = svc
        self.metrics = svc.metrics
        self.public = {"ServerLive", "ServerReady"}  # the health checks: no token needed
        self.work = {
            "ServerLive": self.server_live, "ServerReady": self.server_ready, "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata, "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer, "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics, "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_load, "RepositoryModelUnload": self.repository_unload,
            "LogSettings": self.log_settings,
            "TraceSetting": _unimplemented("tracing is not supported by this service"),
        }
        for method in SERVICE.methods:
            if "SharedMemory" in method.name:
                kind = "CUDA" if method.name.startswith("Cuda") else "system"
                self.work[method.name] = _unimplemented(
                    f"{kind} shared memory is not supported by this service; send the tensors in the request "
                    "(raw_input_contents, as tritonclient does by default)")

    # -- auth, errors and metrics around every call
    async def user(self, context):
        """The caller named by the ``authorization`` metadata, through the HTTP routes' authenticator."""
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value
                break
        try:
            return await self.svc.auth.authenticate(header)
        except MLaaSError as err:  # AuthError: 401, or 503 when the identity provider is out of reach
            raise ServingError(str(err), getattr(err, "status", 401)) from None

    def _observe(self, route: str, code: grpc.StatusCode, start: float) -> None:
        # gRPC calls beside the HTTP routes: the method's path, method "GRPC", the code's name as status
        self.metrics.observe_request(route, "GRPC", code.name, time.perf_counter() - start)

    def unary(self, name: str):
        """The grpc.aio handler of the unary RPC ``name``."""
        work, route, public = self.work[name], f"/{SERVICE.full_name}/{name}", name in self.public

        async def handle(request, context):
            start = time.perf_counter()
            self.metrics.in_flight += 1
            response, code, message = None, StatusCode.OK, ""
            try:
                user = None if public else await self.user(context)
                response = await work(request, user)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status, the server stays up
                code, message = status_of(exc, route)
            finally:
                self.metrics.in_flight -= 1
            self._observe(route, code, start)
            if response is None:
                await context.abort(code, message)
            return response

        return handle

    async def stream_infer(self, requests, context):
        """ModelStreamInfer: the requests of a stream scored up to :data:`STREAM_WINDOW` at once (so they can
        share forward passes) and answered in their order; a failed one answers ``error_message`` and the
        stream goes on. A bad token ends the stream UNAUTHENTICATED before any request is read."""
        route = f"/{SERVICE.full_name}/ModelStreamInfer"
        start = time.perf_counter()
        try:
            user = await self.user(context)
        except Exception as exc:  # noqa: BLE001
            code, message = status_of(exc, route)
            self._observe(route, code, start)
            await context.abort(code, message)
        window: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in requests:
                    await window.put(asyncio.ensure_future(self._stream_one(request, user, route)))
            except asyncio.CancelledError:
                raise
            except Exception:
                await window.put(None)  # what was read is still answered, then the error ends the stream
                raise
            await window.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # a broken stream raises here
        finally:
            reader.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()

    async def _stream_one(self, request, user, route: str):
        start = time.perf_counter()
        self.metrics.in_flight += 1
        try:
            response = M.ModelStreamInferResponse(infer_response=await self.model_infer(request, user))
            code = StatusCode.OK
        except Exception as exc:  # noqa: BLE001 - answered in the stream, which goes on
            code, message = status_of(exc, route)
            # the request's id and model with the message, so a client can tell which request failed
            response = M.ModelStreamInferResponse(error_message=message, infer_response=M.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id))
        finally:
            self.metrics.in_flight -= 1
        self._observe(route, code, start)
        return response

    def handlers(self) -> grpc.GenericRpcHandler:
        """Every RPC of the service's descriptor, with the private pool's message classes on the wire."""
        methods = {}
        for method in SERVICE.methods:
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            if method.client_streaming:
                make, fn = grpc.stream_stream_rpc_method_handler, self.stream_infer
            else:
                make, fn = grpc.unary_unary_rpc_method_handler, self.unary(method.name)
            methods[method.name] = make(fn, request_deserializer=request.FromString,
                                        response_serializer=response.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)

    # -- the RPCs
    async def server_live(self, request, user):
        return M.ServerLiveResponse(live=True)

    async def server_ready(self, request, user):
        return M.ServerReadyResponse(ready=True)

    async def model_ready(self, request, user):
        """Ready when the version is loaded (or loads now); as Triton answers, and as tritonclient.http reads
        the HTTP route's 404, a model the user cannot see is not ready rather than an error."""
        try:
            ready = (await triton.model_ready(self.svc, user, _name(request.name), request.version or None))[0]
        except ServingError as err:
            if err.status != 404:
                raise
            ready = False
        return M.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request, user):
        """What ``GET /v2`` answers."""
        return M.ServerMetadataResponse(**triton.server_metadata())

    async def model_metadata(self, request, user):
        """What ``GET /v2/models/{model}[/versions/{v}]`` answers, in the message's fields."""
        store, name = self.svc.store, _name(request.name)
        store.refresh()
        state, version = store.find(user.name, name, request.version or None)
        meta = S.model_metadata(name, state, version, store.served_runtime(state, version)[1])
        return from_dict("ModelMetadataResponse",
                         {k: meta[k] for k in ("name", "versions", "platform", "inputs", "outputs")})

    async def model_infer(self, request, user):
        name, version, call = infer_call(request)
        answer = await self.svc.infer_call(user, _name(name), version, call)
        return infer_response(answer)

    async def model_config(self, request, user):
        config = triton.model_config(self.svc, user, _name(request.name), request.version or None)
        return M.ModelConfigResponse(config=from_dict("ModelConfig", config))

    async def model_statistics(self, request, user):
        """Of one version, of every version of one model, or (no name) of those used in this process."""
        stats = triton.model_stats(self.svc, user, request.name or None, request.version or None)
        return from_dict("ModelStatisticsResponse", stats)

    async def repository_index(self, request, user):
        """The versions the user can see (this service has one repository: ``repository_name`` is not
        needed), READY when loaded in this process."""
        return from_dict("RepositoryIndexResponse",
                         {"models": triton.repository_index(self.svc, user, ready_only=request.ready)})

    async def repository_load(self, request, user):
        await triton.load_model(self.svc, user, _name(request.model_name), parameters_of(request.parameters))
        return M.RepositoryModelLoadResponse()

    async def repository_unload(self, request, user):
        triton.unload_model(self.svc, user, _name(request.model_name), parameters_of(request.parameters))
        return M.RepositoryModelUnloadResponse()

    async def log_settings(self, request, user):
        """The log settings; those the request names change (admins only)."""
        update = {key: getattr(value, value.WhichOneof("parameter_choice"))
                  for key, value in request.settings.items() if value.WhichOneof("parameter_choice")}
        state = triton.log_settings(self.svc, user, update or None)
        response = M.LogSettingsResponse()
        for key, value in state.items():
            field = ("bool_param" if isinstance(value, bool) else "uint32_param" if isinstance(value, int)
                     else "string_param")
            setattr(response.settings[key], field, value)
        return response


def _name(name: str) -> str:
    if not name:
        raise BadRequest("the request names no model")
    return name


async def start(svc) -> grpc.aio.Server:
    """Serve ``svc`` over gRPC on ``settings.host:settings.grpc_port`` on the running event loop; the caller
    awaits ``server.stop(GRACE_SECONDS)``. Incoming messages are capped at the HTTP body limit."""
    s = svc.settings
    options = [("grpc.max_receive_message_length", s.max_body_bytes),
               # several uvicorn workers share the port (the kernel spreads connections); a single process
               # must not, so that a port another server holds is an error, not a silent split of the traffic
               ("grpc.so_reuseport", 1 if s.workers > 1 else 0)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((InferenceServicer(svc).handlers(),))
    host = f"[{s.host}]" if ":" in s.host else s.host
    try:
        bound = server.add_insecure_port(f"{host}:{s.grpc_port}")
    except RuntimeError:  # grpc's own message only says to turn on its debug log
        bound = 0
    if not bound:
        raise OSError(f"cannot listen for gRPC on {host}:{s.grpc_port}: the port is in use (or the address is "
                      "not one of this machine's); choose another --grpc-port")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%s", host, bound)
    return server
