"""The Open Inference Protocol's ``infer`` over HTTP: request bodies to an :class:`~.tensors.InferCall`,
an :class:`~.tensors.InferAnswer` to a response, in JSON or with Triton's binary tensor data extension.

A request in JSON is the OIP inference request object, each input with its ``data``. With the binary
extension (what ``tritonclient.http`` sends by default) the header ``Inference-Header-Content-Length: L``
says that the first L bytes of the body are that JSON object, and the rest the inputs' raw bytes
(:func:`~.tensors.array_from_raw`) one after the other, in the order of the inputs that carry
``parameters.binary_data_size`` instead of ``data``. Outputs come back in binary when the request asks:
``parameters.binary_data_output: true`` for every output, or ``binary_data: true`` in a requested output's
parameters (which overrides it either way); the answer then has the same header and each binary output
``parameters.binary_data_size``, as ``application/octet-stream``.

Bodies may be compressed (``Content-Encoding: gzip`` or ``deflate``): they are inflated with the service's
body limit on the inflated size too, so a small bomb is a 413 and not an exhausted memory. Answers are
compressed when the client accepts it (``Accept-Encoding``) and they are large enough to gain from it.

Example (what ``tritonclient.http`` sends for one FP32 input of shape [1, 3])::

    Inference-Header-Content-Length: 142
    {"inputs":[{"name":"features","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}],
     "parameters":{"binary_data_output":true}}<12 bytes>
"""

from __future__ import annotations

import asyncio
import zlib
from itertools import chain
from types import SimpleNamespace
from typing import Any

import orjson
from starlette.responses import Response

from mlaas4hep_lab.serving import BadRequest, ServingError, TooLarge
from mlaas4hep_lab.serving import schemas as S
from mlaas4hep_lab.serving.bodies import load_json
from mlaas4hep_lab.serving.tensors import (
    InferAnswer,
    InferCall,
    Requested,
    Tensor,
    array_from_json,
    array_from_raw,
    array_to_raw,
)

__all__ = ["HEADER_LENGTH", "wire_headers", "read_body", "read_request", "answer_response", "inflate"]

HEADER_LENGTH = "inference-header-content-length"
_WIRE = {b"content-encoding": "content-encoding", HEADER_LENGTH.encode(): HEADER_LENGTH,
         b"accept-encoding": "accept-encoding"}
_BINARY = "application/octet-stream"
_COMPRESS_FROM = 1024  # smaller answers are sent as they are: compressing them costs more than it saves
_INFLATE_IN_THREAD = 64 * 1024  # compressed bodies larger than this are inflated off the event loop
_UNSUPPORTED = ("shared_memory_region", "classification")


def wire_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers that shape an ``infer`` body and its answer (``Content-Encoding``,
    ``Inference-Header-Content-Length``, ``Accept-Encoding``) from an ASGI scope's raw ones, in one pass."""
    return {_WIRE[k]: v.decode("latin-1") for k, v in raw if k in _WIRE}


async def read_body(request, headers: dict[str, str], cap: int) -> bytes:
    """The body of an ``infer`` request, inflated when it is compressed (see :func:`inflate`; large bodies
    off the event loop)."""
    body = await request.body()
    encoding = headers.get("content-encoding")
    if encoding is None:
        return body
    if len(body) > _INFLATE_IN_THREAD:
        return await asyncio.to_thread(inflate, body, encoding, cap)
    return inflate(body, encoding, cap)


def read_request(body: bytes, headers: dict[str, str], max_depth: int) -> InferCall:
    """The inference call of an (inflated) HTTP ``infer`` body, JSON or binary, given its
    :func:`wire_headers`; 400 or 422 naming what is wrong."""
    length = headers.get(HEADER_LENGTH)
    if length is None:
        obj = load_json(body, max_depth)
        return _call(_plain(obj) or S.validate(obj, S.InferRequest), None)
    size = _header_length(length, len(body))
    obj = load_json(body[:size], max_depth)
    return _call(_plain(obj) or S.validate(obj, S.InferRequest), memoryview(body)[size:])


_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_NUMBERS = frozenset({float, int})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def _plain(obj: Any) -> SimpleNamespace | None:
    """The request as :func:`_call` reads it, without the request model's validation, when it is of the
    common kind that the model would take unchanged: typed fields, parameters as objects, and in JSON
    ``data`` of FP16/FP32/FP64 inputs numbers only (flat, or one list per row). None for anything else, which
    the request model then validates, so every refusal says what it said before (tested case by case)."""
    if type(obj) is not dict or not obj.keys() <= _REQUEST_KEYS:
        return None
    rid, inputs, outputs, params = obj.get("id"), obj.get("inputs"), obj.get("outputs"), obj.get("parameters")
    if (rid is not None and type(rid) is not str) or (params is not None and type(params) is not dict) \
            or type(inputs) is not list or not inputs:
        return None
    plain_inputs = []
    for t in inputs:  # the request's few tensors
        if type(t) is not dict or not t.keys() <= _INPUT_KEYS:
            return None
        name, shape, datatype, data, tparams = (t.get(k) for k in ("name", "shape", "datatype", "data", "parameters"))
        if type(name) is not str or type(datatype) is not str or type(shape) is not list \
                or not 1 <= len(shape) <= 8 or not set(map(type, shape)) <= {int} or min(shape) < 0 \
                or (tparams is not None and type(tparams) is not dict):
            return None
        if data is not None:
            if datatype not in _FLOAT_TYPES or type(data) is not list:
                return None
            leaves = data
            if data and type(data[0]) is list:  # one list per row: all rows lists of numbers
                if set(map(type, data)) != {list}:
                    return None
                leaves = chain.from_iterable(data)
            if not set(map(type, leaves)) <= _NUMBERS:  # C-level passes; true/false, null, strings: not here
                return None
        plain_inputs.append(SimpleNamespace(name=name, shape=shape, datatype=datatype, data=data, parameters=tparams))
    plain_outputs = None
    if outputs is not None:
        if type(outputs) is not list:
            return None
        plain_outputs = []
        for o in outputs:
            if type(o) is not dict or not o.keys() <= _OUTPUT_KEYS or type(o.get("name")) is not str \
                    or (o.get("parameters") is not None and type(o["parameters"]) is not dict):
                return None
            plain_outputs.append(SimpleNamespace(name=o["name"], parameters=o.get("parameters")))
    return SimpleNamespace(id=rid, inputs=plain_inputs, outputs=plain_outputs, parameters=params)


def _header_length(value: str, body: int) -> int:
    try:
        size = int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be a number of bytes, not {value[:40]!r}") from None
    if not 0 < size <= body:
        raise BadRequest(f"Inference-Header-Content-Length {size} is not within the body of {body} bytes")
    return size


def inflate(body: bytes, encoding: str, cap: int) -> bytes:
    """``body`` decompressed (``gzip`` or ``deflate``: zlib, or raw deflate as some clients send it), at
    most ``cap`` bytes of it: 413 past that, 400 when it is corrupt or truncated, 415 for another encoding."""
    name = encoding.strip().lower()
    if name == "identity":
        return body
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif name == "deflate":  # zlib's header says its window: 0x78 first; anything else is raw deflate
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise ServingError(f"Content-Encoding {encoding[:40]!r} is not supported; send gzip, deflate or none",
                           415)
    stream = zlib.decompressobj(wbits)
    try:
        out = stream.decompress(body, cap + 1)  # never more than the cap (+1 to know it was passed)
    except zlib.error as err:
        raise BadRequest(f"the {name} body cannot be decompressed: {err}") from None
    if len(out) > cap or stream.unconsumed_tail:
        raise TooLarge(f"the {name} body inflates past this service's limit of {cap} bytes")
    if not stream.eof:
        raise BadRequest(f"the {name} body is truncated: its compressed stream does not end")
    if stream.unused_data:
        raise BadRequest(f"the {name} body has {len(stream.unused_data)} bytes after its compressed stream")
    return out


def _call(req: S.InferRequest | SimpleNamespace, raw: memoryview | None) -> InferCall:
    """An :class:`InferCall` of a validated (or :func:`_plain`) request; ``raw``: the bytes after its JSON
    header (binary)."""
    inputs, offset = [], 0
    for t in req.inputs:
        params = t.parameters
        size = None
        if params:
            _refuse_unsupported(params, "input", t.name)
            size = params.get("binary_data_size")
        else:
            params = {}
        if size is None:
            if t.data is None:
                raise BadRequest(f"input {t.name!r} has no data: send 'data', or binary data with "
                                 f"parameters.binary_data_size and the Inference-Header-Content-Length header")
            array = array_from_json(t.name, t.datatype, t.shape, t.data)
        else:
            if raw is None:
                raise BadRequest(f"input {t.name!r} says binary_data_size, but the request has no "
                                 f"Inference-Header-Content-Length header saying where its JSON ends")
            if type(size) is not int or size < 0:
                raise BadRequest(f"input {t.name!r}: binary_data_size must be a non-negative integer")
            if t.data is not None:
                raise BadRequest(f"input {t.name!r} has both 'data' and binary_data_size; send one")
            if offset + size > len(raw):
                raise BadRequest(f"input {t.name!r}: its {size} bytes of binary data run past the body "
                                 f"({len(raw) - offset} bytes are left after the previous inputs)")
            array = array_from_raw(t.name, t.datatype, t.shape, raw[offset:offset + size])
            offset += size
        inputs.append(Tensor(t.name, t.datatype, t.shape, array, params))
    if raw is not None and offset != len(raw):
        raise BadRequest(f"the body has {len(raw) - offset} bytes after the inputs' binary data (their "
                         f"binary_data_size add up to {offset})")
    params = req.parameters or {}
    if params:
        _check_flag(params, "binary_data_output", "request", "parameters")
    outputs = None
    if req.outputs is not None:
        outputs = []
        for o in req.outputs:
            oparams = o.parameters or {}
            _refuse_unsupported(oparams, "output", o.name)
            outputs.append(Requested(o.name, _check_flag(oparams, "binary_data", "output", o.name), oparams))
    return InferCall(inputs, outputs, req.id, params)


def _check_flag(params: dict[str, Any], key: str, what: str, name: str) -> bool | None:
    value = params.get(key)
    if value is not None and type(value) is not bool:
        raise BadRequest(f"{what} {name!r}: {key} must be true or false")
    return value


def _refuse_unsupported(params: dict[str, Any], what: str, name: str) -> None:
    for key in _UNSUPPORTED:
        if key in params:
            extension = "shared memory" if key.startswith("shared") else "classification"
            raise BadRequest(f"{what} {name!r}: the {extension} extension ({key}) is not supported here")


def answer_response(answer: InferAnswer, call: InferCall, headers: dict[str, str]) -> Response:
    """The HTTP response of an answer: JSON, or binary where the call asks for it (see the module
    docstring), compressed when the client accepts gzip or deflate and the body is large enough."""
    default = call.parameters.get("binary_data_output") is True if call.parameters else False
    flags = {o.name: o.binary for o in call.outputs} if call.outputs else None
    outputs, blobs = [], []
    for t in answer.outputs:
        binary = flags.get(t.name) if flags else None
        if binary if binary is not None else default:
            raw = array_to_raw(t)
            blobs.append(raw)
            outputs.append({"name": t.name, "datatype": t.datatype, "shape": t.shape,
                            "parameters": {"binary_data_size": len(raw)}})
        else:  # OIP tensors in JSON are flat in row-major order, their shape beside them
            outputs.append({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.array.reshape(-1)})
    out: dict[str, Any] = {"model_name": answer.model_name, "model_version": answer.model_version,
                           "outputs": outputs}
    if answer.id is not None:
        out["id"] = answer.id
    body = orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
    extra: list[tuple[bytes, bytes]] = []
    if blobs:
        extra.append((b"inference-header-content-length", str(len(body)).encode()))
        body = b"".join((body, *blobs))
    accept = headers.get("accept-encoding")
    if accept and len(body) >= _COMPRESS_FROM:
        encoding = _accepted(accept)
        if encoding is not None:
            body = _deflate(body, encoding)
            extra += [(b"content-encoding", encoding.encode()), (b"vary", b"Accept-Encoding")]
    response = Response(body, 200, None, _BINARY if blobs else "application/json")
    if extra:  # raw: Starlette's header dict would cost more than the rest of this function
        response.raw_headers += extra
    return response


def _accepted(accept: str) -> str | None:
    """gzip or deflate, whichever ``Accept-Encoding`` lists first with a non-zero quality (None: neither)."""
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if name not in ("gzip", "deflate"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                if float(q[2:]) <= 0:
                    continue
            except ValueError:
                continue
        return name
    return None


def _deflate(body: bytes, encoding: str) -> bytes:
    # level 1: most of the gain for a fraction of the time (answers are float arrays, not text)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()
