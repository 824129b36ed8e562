"""The messages of the Open Inference Protocol's gRPC service (package ``inference`` of Triton's
``grpc_service.proto`` and ``model_config.proto``, kept beside this module), and their conversions from and to
the protocol-neutral tensors of :mod:`mlaas4hep_lab.serving.tensors`.

The message classes come from ``grpc_service.pb``, a serialized FileDescriptorSet of the two ``.proto`` files,
loaded into a PRIVATE descriptor pool: tritonclient registers the same files (and package ``inference``) in
protobuf's default pool, and a second registration there fails (duplicate file or symbol) in any process that
imports both, such as a test that starts a server in-process and calls it with tritonclient. Regenerate the set
after changing a ``.proto`` file (grpcio-tools is needed for that only, not at run time)::

    cd mlaas4hep_lab/serving/grpc && python -m grpc_tools.protoc -I. --include_imports \\
        --descriptor_set_out=grpc_service.pb grpc_service.proto

Example::

    request = M.ModelInferRequest.FromString(wire)
    name, version, call = infer_call(request)      # an InferCall of Tensors
    response = infer_response(answer)              # the Tensors as raw_output_contents
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import MissingExtraError
from mlaas4hep_lab.serving import BadRequest, ServingError
from mlaas4hep_lab.serving.tensors import (
    DATATYPES,
    InferAnswer,
    InferCall,
    Requested,
    Tensor,
    array_from_json,
    array_from_raw,
    array_to_raw,
    check_shape,
    datatype_of,
)

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
except ImportError as err:  # pragma: no cover - protobuf comes with grpcio, in the serve extra
    raise MissingExtraError(f"the gRPC service needs protobuf ({err}); install it with: "
                            'pip install "mlaas4hep-lab[serve]"') from err

__all__ = ["M", "SERVICE", "DESCRIPTOR_SET", "PROTO_FILES", "infer_call", "infer_response", "from_dict",
           "parameters_of", "SHARED_MEMORY"]

HERE = Path(__file__).parent
DESCRIPTOR_SET = HERE / "grpc_service.pb"
PROTO_FILES = (HERE / "grpc_service.proto", HERE / "model_config.proto")
SERVICE_NAME = "inference.GRPCInferenceService"
SHARED_MEMORY = "shared_memory_region"  # the tensor parameter that points at a registered region

# where InferTensorContents holds each datatype (FP16 and BF16 have none: raw_input_contents only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:  # dependencies first, as --include_imports writes them
        pool.Add(proto)
    return pool


POOL = _pool()
SERVICE = POOL.FindServiceByName(SERVICE_NAME)


class _Messages:
    """The message classes of package ``inference`` by name (``M.ModelInferRequest``), made on first use."""

    def __getattr__(self, name: str):
        try:
            descriptor = POOL.FindMessageTypeByName(f"inference.{name}")
        except KeyError:
            raise AttributeError(f"no message inference.{name} in {DESCRIPTOR_SET.name}") from None
        cls = message_factory.GetMessageClass(descriptor)
        setattr(self, name, cls)
        return cls


M = _Messages()


def from_dict(message_name: str, data: dict[str, Any]):
    """The message ``message_name`` of ``data`` in protobuf's JSON mapping (Triton's JSON forms of the model
    configuration, statistics and repository index are that mapping); fields it does not know are left out."""
    return json_format.ParseDict(data, getattr(M, message_name)(), ignore_unknown_fields=True)


def parameters_of(params) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` (or ModelRepositoryParameter) as a plain dict of its values."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def _set_parameters(target, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:  # a list or a dict (e.g. output columns): its JSON text, as Triton carries structured values
            target[key].string_param = json.dumps(value)


def _refuse_shared_memory(kind: str, name: str, params) -> None:
    if SHARED_MEMORY in params:
        raise ServingError(f"{kind} {name!r}: shared memory is not supported by this service; send the "
                           "tensor's data in the request (raw_input_contents or contents)", 501)


def _contents_array(tensor) -> np.ndarray:
    """The array an input gives in ``contents``: the field of its datatype only, checked like JSON data."""
    name, datatype = tensor.name, tensor.datatype
    given = [field.name for field, _ in tensor.contents.ListFields()]
    expected = CONTENTS.get(datatype)
    if expected is None:
        if datatype in DATATYPES:  # FP16
            raise BadRequest(f"input {name!r}: {datatype} data has no contents field; send it in "
                             "raw_input_contents")
        datatype_of(name, datatype)  # unknown (or BF16): the error that names the datatypes
    if given and given != [expected]:
        raise BadRequest(f"input {name!r}: {datatype} data goes in contents.{expected}, not "
                         f"{', '.join('contents.' + g for g in given)}")
    values = getattr(tensor.contents, expected)
    shape = list(tensor.shape)
    if datatype in ("FP32", "FP64"):  # already of their width: one copy, no range check needed
        X, size = np.asarray(values, DATATYPES[datatype]), check_shape(name, shape)
        if X.size != size:
            raise BadRequest(f"input {name!r}: contents hold {X.size} values; shape {shape} needs {size}")
        return X.reshape(shape)
    return array_from_json(name, datatype, shape, list(values))


def infer_call(request) -> tuple[str, str | None, InferCall]:
    """The model name, version (None: the one tagged ``latest``) and :class:`InferCall` of a
    ``ModelInferRequest``: each input's data from ``raw_input_contents`` (one entry per input, in order:
    tritonclient's way) or from its ``contents``. BadRequest (400) naming the input otherwise."""
    inputs, raw = request.inputs, request.raw_input_contents
    if not inputs:
        raise BadRequest("the request has no inputs")
    if raw and len(raw) != len(inputs):
        raise BadRequest(f"raw_input_contents holds {len(raw)} entries for {len(inputs)} inputs; give one per "
                         "input, in the order of the inputs (or none, and each input's data in contents)")
    tensors = []
    for i, tensor in enumerate(inputs):
        params = parameters_of(tensor.parameters)
        _refuse_shared_memory("input", tensor.name, params)
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise BadRequest(f"input {tensor.name!r}: data in both raw_input_contents and contents")
            array = array_from_raw(tensor.name, tensor.datatype, shape, raw[i])
        elif tensor.HasField("contents"):
            array = _contents_array(tensor)
        elif check_shape(tensor.name, shape) == 0:
            array = array_from_json(tensor.name, tensor.datatype, shape, [])
        else:
            raise BadRequest(f"input {tensor.name!r} has no data: send it in raw_input_contents or contents")
        tensors.append(Tensor(tensor.name, tensor.datatype, shape, array, params))
    outputs = None
    if request.outputs:
        outputs = []
        for out in request.outputs:
            params = parameters_of(out.parameters)
            _refuse_shared_memory("output", out.name, params)
            outputs.append(Requested(out.name, None, params))
    call = InferCall(tensors, outputs, request.id or None, parameters_of(request.parameters))
    return request.model_name, request.model_version or None, call


def infer_response(answer: InferAnswer, model_name: str | None = None):
    """The ``ModelInferResponse`` of an answer: each output's data in ``raw_output_contents``, in the order
    of ``outputs`` (as tritonclient reads them), the request's ``id`` echoed."""
    response = M.ModelInferResponse(model_name=model_name or answer.model_name,
                                    model_version=str(answer.model_version), id=answer.id or "")
    for tensor in answer.outputs:
        out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        _set_parameters(out.parameters, tensor.parameters)
    response.raw_output_contents.extend([array_to_raw(tensor) for tensor in answer.outputs])
    return response
