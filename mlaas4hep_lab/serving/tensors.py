"""Tensors of the Open Inference Protocol, whatever the wire: the protocol-neutral core of ``infer``.

The HTTP codec (:mod:`.oip`: JSON and the binary tensor data extension) and the gRPC ``ModelInfer`` both turn
a request into an :class:`InferCall` of :class:`Tensor` s, hand it to ``Service.infer_call`` and encode the
:class:`InferAnswer` it returns, so the answers are the same whatever the client speaks.

The raw layout (:func:`array_from_raw`, :func:`array_to_raw`) is the one of Triton's binary extension and of
gRPC ``raw_input_contents``: little-endian, row-major; BOOL one byte per element; BYTES each element a 4-byte
little-endian length followed by its bytes.

Example::

    X = array_from_raw("features", "FP32", [2, 3], b"\\0" * 24)          # float32[2, 3]
    array_from_json("mask", "BOOL", [1, 2], [[True, False]])           # bool[1, 2]
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas4hep_lab.serving import BadRequest

__all__ = ["DATATYPES", "NUMERIC", "Tensor", "Requested", "InferCall", "InferAnswer", "array_from_raw",
           "array_to_raw", "array_from_json", "datatype_of", "check_shape", "as_float32"]

# every OIP datatype this service reads, little-endian (BF16 has no numpy type: refused by datatype_of)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object)}
NUMERIC = frozenset(DATATYPES) - {"BOOL", "BYTES"}
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_MAX_ELEMENTS = 1 << 31  # a shape whose product is beyond this cannot be a body this service accepts


@dataclass(slots=True)
class Tensor:
    """One input or output tensor: ``array`` is already of ``shape`` and of ``DATATYPES[datatype]``."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Requested:
    """One requested output; ``binary`` is the HTTP ``binary_data`` parameter (None: not said)."""

    name: str
    binary: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferCall:
    """One inference request, whatever the wire format; ``outputs`` None asks for every output."""

    inputs: list[Tensor]
    outputs: list[Requested] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferAnswer:
    """What ``Service.infer_call`` answers: the requested output tensors of the model version served."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None


def datatype_of(name: str, datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype; 400 naming the valid ones otherwise (BF16 too: numpy has none)."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        if datatype == "BF16":
            raise BadRequest(f"input {name!r}: datatype BF16 is not supported here; send FP32 (or FP16, FP64)")
        raise BadRequest(f"input {name!r}: unknown datatype {str(datatype)[:40]!r}; use one of "
                         f"{', '.join(DATATYPES)}")
    return dtype


def check_shape(name: str, shape: Any) -> int:
    """The number of elements of an OIP shape (a list of non-negative integers); 400 otherwise."""
    size = None
    if type(shape) is list and 1 <= len(shape) <= 8:
        try:
            size = math.prod(shape)  # a float or a string among the dimensions: not an int product
        except TypeError:
            pass
    if type(size) is not int or min(shape) < 0:
        raise BadRequest(f"input {name!r}: shape must be a list of 1 to 8 non-negative integers, "
                         f"not {str(shape)[:80]}")
    if size > _MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: shape {shape} holds more elements than any request can carry")
    return size


def array_from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """The array of ``shape`` held by ``raw`` bytes in the binary layout (numeric data: a read-only view of
    them, or an aligned copy where they do not start on the item size); 400 when the byte count does not
    match the shape, or BOOL bytes are not 0 or 1."""
    dtype = DATATYPES.get(datatype) or datatype_of(name, datatype)
    size = check_shape(name, shape)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, size, raw)
    need = size * dtype.itemsize
    if len(raw) != need:
        raise BadRequest(f"input {name!r}: {len(raw)} bytes of binary data, but {datatype} of shape {shape} "
                         f"needs {need}")
    X = np.ndarray(shape, dtype, raw)
    if not X.flags.aligned:  # after a JSON header of any length: runtimes want aligned buffers
        X = X.copy()
    if datatype == "BOOL" and size and not (X.view(np.uint8) <= 1).all():
        raise BadRequest(f"input {name!r}: BOOL bytes must be 0 or 1")
    return X


def _bytes_from_raw(name: str, shape: list[int], size: int, raw: bytes | memoryview) -> np.ndarray:
    # each element's offset depends on the lengths before it: a walk over the elements, bounded by the body
    # (at least 4 bytes each); no model here takes BYTES, so this only runs to refuse them by name
    raw = bytes(raw)
    items, offset, end = [], 0, len(raw)
    while offset < end and len(items) < size:
        if offset + 4 > end:
            break
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(f"input {name!r}: a BYTES element of {length} bytes runs past the data")
        items.append(raw[offset:offset + length])
        offset += length
    if len(items) != size or offset != end:
        raise BadRequest(f"input {name!r}: BYTES data does not hold the {size} elements of shape {shape}")
    X = np.empty(size, dtype=object)
    X[:] = items
    return X.reshape(shape)


def array_to_raw(tensor: Tensor) -> bytes:
    """The bytes of ``tensor`` in the binary layout (the inverse of :func:`array_from_raw`)."""
    if tensor.datatype == "BYTES":
        flat = [x if isinstance(x, bytes) else str(x).encode() for x in tensor.array.reshape(-1)]
        return b"".join(struct.pack("<I", len(x)) + x for x in flat)
    dtype = DATATYPES.get(tensor.datatype) or datatype_of(tensor.name, tensor.datatype)
    return np.ascontiguousarray(tensor.array, dtype=dtype).tobytes()


@np.errstate(over="ignore")  # a number beyond FP32 (FP16) is inf, as in any cast: models refuse it (as_float32)
def _floats(data: list, dtype: np.dtype) -> np.ndarray:
    return np.asarray(data, dtype=dtype)


def array_from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """The array of ``shape`` held by OIP JSON ``data`` (flat in row-major order, or nested as the shape):
    numbers for numeric types (whole numbers within range for integer types; floats beyond the FP32 or
    FP16 range become inf), true/false for BOOL, strings for BYTES; 400 naming what is wrong."""
    dtype = DATATYPES.get(datatype) or datatype_of(name, datatype)
    size = check_shape(name, shape)
    if type(data) is not list:
        raise BadRequest(f"input {name!r}: data must be a list (flat, or nested as the shape)")
    leaf = data
    while type(leaf) is list and leaf:
        leaf = leaf[0]
    # the common case, numbers to FP32 (FP16, FP64), straight to the dtype (JSON lists are all numbers, or
    # all true/false, or all strings: the request model checks that); anything else is looked at first
    fast = datatype in _FLOATS and (type(leaf) is float or type(leaf) is int)
    try:
        X = _floats(data, dtype) if fast else np.asarray(data, dtype=object if datatype == "BYTES" else None)
    except (ValueError, TypeError):
        raise BadRequest(f"input {name!r}: data must be lists of equal lengths of {datatype} values") from None
    except OverflowError:
        raise BadRequest(f"input {name!r}: values out of the {datatype} range") from None
    if X.size != size or (X.ndim > 1 and list(X.shape) != shape):
        raise BadRequest(f"input {name!r}: data holds {X.size} values in shape {list(X.shape)}; shape "
                         f"{shape} needs {size}")
    X = X.reshape(shape)
    if fast:
        return X
    kind = X.dtype.kind
    if size == 0:
        return np.zeros(shape, dtype)
    if datatype == "BYTES":
        if not all(isinstance(x, str | bytes) for x in X.flat):  # BYTES only, to be refused by name
            raise BadRequest(f"input {name!r}: BYTES data must be strings")
        return np.frompyfunc(lambda x: x.encode() if isinstance(x, str) else x, 1, 1)(X).astype(object)
    if datatype == "BOOL":
        if kind != "b":
            raise BadRequest(f"input {name!r}: BOOL data must be true/false")
        return X
    if kind not in "iuf":
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers"
                         + (", not true/false" if kind == "b" else ""))
    if dtype.kind == "f":  # integers: always within a float range
        return X.astype(dtype)
    if kind == "f" and not (np.floor(X) == X).all():
        raise BadRequest(f"input {name!r}: {datatype} data must be whole numbers")
    info = np.iinfo(dtype)
    if not ((X >= info.min).all() and (X <= info.max).all()):
        raise BadRequest(f"input {name!r}: values out of the {datatype} range [{info.min}, {info.max}]")
    return X.astype(dtype, copy=False)


_F32_MAX = float(np.finfo(np.float32).max)


def as_float32(t: Tensor) -> np.ndarray:
    """A numeric input as the float32 a model takes (no copy when it is float32 already): any numeric OIP
    datatype, with finite values within the float32 range; BOOL, BYTES and non-finite values are a 400."""
    X = t.array
    if t.datatype not in NUMERIC:
        raise BadRequest(f"input {t.name!r}: datatype {t.datatype} is not accepted by this model, which takes "
                         f"numbers: send FP32 (or FP16, FP64, INTn, UINTn)")
    if X.dtype.kind == "f" and X.size:  # integers always fit (as the nearest float32)
        # the float64 sum of float32 values cannot overflow: it is finite exactly when they all are
        finite = math.isfinite(X.sum(dtype=np.float64)) if X.dtype.itemsize < 8 else np.abs(X).max() <= _F32_MAX
        if not finite:
            raise BadRequest(f"input {t.name!r}: values must be finite numbers within the float32 range")
    return X if X.dtype == np.float32 else X.astype(np.float32)
