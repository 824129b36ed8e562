"""What the routes share (:class:`Service`: settings, store, authenticator, metrics, inference threads)
and the work of the hot routes, called by both their fast Starlette routes and their documented twins."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from mlaas4hep_lab.auth import Authenticator, AuthError, User
from mlaas4hep_lab.serving import BadRequest, Forbidden, ServingError, oip
from mlaas4hep_lab.serving import schemas as S
from mlaas4hep_lab.serving.batching import Batcher, Direct, timed
from mlaas4hep_lab.serving.metrics import Metrics
from mlaas4hep_lab.serving.named import NamedRuntime, is_named, named_feeds, named_runtime
from mlaas4hep_lab.serving.settings import Settings
from mlaas4hep_lab.serving.stats import Statistics
from mlaas4hep_lab.serving.store import LoadedModel, ModelStore
from mlaas4hep_lab.serving.tensors import InferAnswer, InferCall, Tensor

__all__ = ["Service", "json_response", "error_response", "requested_outputs", "answer_outputs"]

log = logging.getLogger("mlaas4hep_lab.serving")
_JSON = "application/json"


_LOOKUPS = 4096  # model lookups kept (user, ref, version); past it they start again
_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
_MMAP_THRESHOLD = 256 * 1024


def _fixed_mmap_threshold() -> None:
    """Give big blocks (model weights, runtime buffers, request batches) back to the system when freed.

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), so after the
    first model is unloaded the weights of the next ones land on the heap, where unloading leaves holes
    the heap never returns: a service that uploads and deletes versions grew by ~20% in 60 cycles. A fixed
    threshold keeps blocks of 256 KiB and more in their own mappings (measured: +3% over the same cycles).
    Elsewhere than glibc this does nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        log.debug("mallopt is not available: the allocator's own thresholds stay")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, _JSON)


def error_response(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json_response({"error": message}, status, headers)


def requested_outputs(call: InferCall, outputs) -> list[str]:
    """The output names a call asks for, checked before any work: the model's output tensor (the default),
    and for a multi-class or regression model its columns (``p_<class>`` or the targets), one [N] tensor
    each. An unknown or repeated name is a 400 naming the outputs there are."""
    if not call.outputs:  # none named (or an empty list): the output tensor
        return [outputs.tensor]
    names = [o.name for o in call.outputs]
    valid = [outputs.tensor, *(outputs.names if outputs.width is not None else ())]
    for name in names:
        if name not in valid:
            raise BadRequest(f"unknown output {str(name)[:100]!r}; this model answers "
                             + ", ".join(repr(v) for v in valid))
        if names.count(name) > 1:
            raise BadRequest(f"output {name!r} is asked for more than once")
    return names


def answer_outputs(scores: np.ndarray, outputs, names: list[str]) -> list[Tensor]:
    """The FP32 tensors ``names`` of a model's scores: the output tensor ([N] or [N, W]) or one column [N]."""
    answer = []
    for name in names:
        array = scores if name == outputs.tensor else np.ascontiguousarray(scores[:, outputs.names.index(name)])
        answer.append(Tensor(name, "FP32", list(array.shape), array))
    return answer


class Service:
    """What the routes share: settings, store, authenticator, metrics, inference threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.auth = Authenticator.from_settings(settings)
        self.store = ModelStore.from_settings(settings)
        self.metrics = Metrics()
        self.stats = Statistics()  # Triton's per-model inference statistics, counted in score/_score_named
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="mlaas4hep-infer")
        self.depth = settings.max_json_depth
        self.tune_gc = False  # set by own_process_gc(): this process is the server, nothing else
        self._lookups: dict[tuple, tuple[object, LoadedModel]] = {}  # (user, ref, version) -> (store token, model)

    def own_process_gc(self) -> None:
        """Keep what is loaded out of the garbage collector's passes, and collect less often.

        A loaded TensorFlow is ~450k tracked objects: a full GC pass then costs ~300 ms, paid by every
        request in flight at that moment (the p99). Everything loaded so far lives as long as the server,
        so it is moved to the permanent generation (``gc.freeze``); again after each model load. The
        allocator's mmap threshold is fixed too (:func:`_fixed_mmap_threshold`)."""
        self.tune_gc = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        _fixed_mmap_threshold()

    async def user(self, request: Request) -> User:
        try:
            return await self.auth.authenticate(request.headers.get("authorization"))
        except AuthError as err:
            raise ServingError(str(err), err.status) from None

    def check_push_scope(self, user: User) -> None:
        """Hub users need ``settings.push_scope`` (e.g. ``custom:tfaas:push``) to upload; raises 403."""
        scope = self.settings.push_scope
        if not scope or user.source != "hub":
            return
        if scope in user.scopes or f"{scope}!user={user.name}" in user.scopes:
            return
        raise Forbidden(f"pushing models needs the scope {scope!r}, which this token does not carry; ask the "
                        "hub's admins for a role that grants it")

    async def model(self, user: User, ref: str, version: str | int | None = None) -> LoadedModel:
        """The loaded model ``user`` means by ``ref`` (loading it in a thread the first time). The answer is
        kept for the next request of the same (user, ref, version) while the store is unchanged."""
        store = self.store
        store.refresh()
        key = (user.name, ref, version)
        hit = self._lookups.get(key)
        if hit is not None and store.still_current(hit[1], hit[0]):
            return hit[1]
        token = store.index_token
        state, v = store.find(user.name, ref, None if version is None else str(version))
        model = store.loaded(state["owner"], state["name"], v)
        if model is None:
            model = await asyncio.to_thread(store.load, state["owner"], state["name"], v)
            if self.tune_gc:  # a first load may have imported a framework: freeze it too
                gc.collect()
                gc.freeze()
        if model.batcher is None:
            model.batcher = self._batcher(model)
        if len(self._lookups) >= _LOOKUPS:
            self._lookups.clear()
        self._lookups[key] = (token, model)
        return model

    def _batcher(self, model: LoadedModel):
        s = self.settings
        label = model.ref
        # only a tiny model may run on the event loop: a one-row pass must cost less than a thread hop
        inline = s.inline_rows if model.runtime.row_seconds < 1e-4 else 0
        stats = model.stats = self.stats.model(model.owner, model.name, model.version)

        def on_batch(rows: int, requests: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
            self.metrics.observe_batch(label, rows, requests)
            stats.batch(rows, requests, queue_ns, input_ns, infer_ns, output_ns)

        if not s.batching:
            return Direct(model.runtime.predict, self.executor, inline, on_batch)
        return Batcher(model.runtime.predict, max_batch=s.max_batch, max_delay_ms=s.max_delay_ms,
                       queue_size=s.queue_size, executor=self.executor, inline_rows=inline,
                       on_batch=on_batch)

    async def score(self, model: LoadedModel, X: np.ndarray) -> np.ndarray:
        """float32[N] scores (binary) or float32[N, W] (a multi-class or regression model)."""
        start = time.perf_counter_ns()
        stats = model.stats  # counted here, whatever the route or wire format
        if len(X) == 0:
            stats.request(0, time.perf_counter_ns() - start, True)
            return np.zeros(model.runtime.outputs.shape(0), np.float32)
        try:
            scores = await model.batcher.submit(X)
        except BaseException as err:
            stats.request(len(X), time.perf_counter_ns() - start, False)
            if isinstance(err, ServingError) and err.status == 503:
                self.metrics.rejected[model.ref] += 1
            raise
        stats.request(len(X), time.perf_counter_ns() - start, True)
        return scores

    async def _score_named(self, req: InferCall, model: LoadedModel) -> np.ndarray:
        """The named inputs of an objects-layout model through its named-input export (:mod:`.named`), on
        the inference threads; the export is loaded on the first such request."""
        loop = asyncio.get_running_loop()
        runtime = model.named if isinstance(model.named, NamedRuntime) else await loop.run_in_executor(
            self.executor, named_runtime, model, self.store.runtime_threads)
        start, stats = time.perf_counter_ns(), model.stats
        try:
            feeds, n = named_feeds(req, runtime, model.ref)
            if n == 0:
                scores = np.zeros(model.runtime.outputs.shape(0), np.float32)
            else:
                scores, t0, t1 = await loop.run_in_executor(self.executor, timed, runtime.predict, feeds, n)
                stats.batch(n, 1, 0, t0 - start, t1 - t0, time.perf_counter_ns() - t1)
        except BaseException:
            stats.request(0, time.perf_counter_ns() - start, False)
            raise
        stats.request(n, time.perf_counter_ns() - start, True)
        return scores

    # -- the hot routes' work, shared by the fast Starlette routes and their documented FastAPI twins
    async def predict_json(self, request: Request, user: User) -> Response:
        req = S.parse_body(await request.body(), S.JsonRequest, self.depth)
        model = await self.model(user, req.model, req.version)
        return json_response(await self.score(model, S.json_matrix(req, model)))

    async def infer(self, request: Request, user: User, ref: str, version: str | None) -> Response:
        """OIP ``infer`` over HTTP: JSON or the binary tensor data extension, compressed or not (:mod:`.oip`)."""
        headers = oip.wire_headers(request.scope["headers"])
        call = oip.read_request(await oip.read_body(request, headers, self.settings.max_body_bytes), headers,
                                self.depth)
        answer = await self.infer_call(user, ref, version, call)
        return oip.answer_response(answer, call, headers)

    async def infer_call(self, user: User, ref: str, version: str | int | None, call: InferCall) -> InferAnswer:
        """One inference, whatever the wire (HTTP JSON or binary, gRPC): the model ``user`` means by ``ref``
        scores the call's inputs (``features``, through the batcher; or an objects-layout model's named
        inputs) and answers the requested outputs (:func:`answer_outputs`). Errors are ServingErrors."""
        model = await self.model(user, ref, version)
        outputs = model.runtime.outputs
        requested = requested_outputs(call, outputs)
        if is_named(call, model):  # an objects-layout model's named inputs: one pass, not batched
            scores = await self._score_named(call, model)
        else:
            scores = await self.score(model, S.infer_matrix(call, model))
        return InferAnswer(ref, model.version, answer_outputs(scores, outputs, requested), call.id)

    async def events(self, request: Request, user: User, ref: str, version: str | None) -> Response:
        req = S.parse_body(await request.body(), S.EventsRequest, self.depth)
        model = await self.model(user, ref, version if version is not None else req.version)
        events = req.events
        size = len(events) if isinstance(events, list) else sum(len(v) for v in events.values())
        if size > 4096:  # big batches are preprocessed off the event loop
            X, keep = await asyncio.to_thread(S.events_matrix, events, model)
        else:
            X, keep = S.events_matrix(events, model)
        scores = await self.score(model, X)
        out = {"model_name": ref, "model_version": model.version, "scores": scores, "keep": keep}
        if model.runtime.outputs.width is not None:  # the columns of each event's list of values
            out["outputs"] = list(model.runtime.outputs.names)
        if req.id is not None:
            out["id"] = req.id
        return json_response(out)

    async def echo(self, request: Request) -> Response:
        return json_response(S.load_json(await request.body(), self.depth))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


