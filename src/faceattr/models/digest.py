"""A digest of a model file's weights in its own metadata, checked on load (torch-free).

A file whose header is intact but whose tensor bytes are damaged (a bad disk, a truncated
copy patched up, a bit flip) would otherwise load and predict NaN or plain wrong numbers.
Both formats carry ``faceattr_sha256`` in their string metadata:

- ``.safetensors``: the SHA-256 of the data section (every tensor's bytes, after the header);
- ``.onnx``: the SHA-256 of the serialized graph (its nodes and initializers), read with a
  small reader of protobuf's wire format at the top level of ``ModelProto`` only, so the
  light install needs no ``onnx`` package.

An ONNX tensor may keep its data in another file (``external_data``), which ONNX Runtime
reads from the current folder for a model given as bytes and which no digest covers: the
same reader walks the graph's tensors and such a file is refused (:func:`verify_onnx`).

Files written before the digest existed have no such key and still load.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

from faceattr.errors import ModelError

DIGEST_KEY = "faceattr_sha256"

# --- safetensors: 8-byte little-endian header length, JSON header, data section ----------


def _safetensors_split(blob: bytes | memoryview, path: Path) -> tuple[dict, int]:
    if len(blob) < 8:
        raise ModelError(f"{path} is too short to be a safetensors file ({len(blob)} bytes).")
    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    if n > len(blob) - 8:
        raise ModelError(f"{path} is truncated: its header claims {n} bytes.")
    try:
        header = json.loads(bytes(blob[8 : 8 + n]))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} has a damaged safetensors header ({e}).") from e
    return header, 8 + n


def safetensors_digest(blob: bytes | memoryview, path: Path = Path("model")) -> str:
    _, start = _safetensors_split(blob, path)
    return hashlib.sha256(blob[start:]).hexdigest()


def with_safetensors_digest(blob: bytes) -> bytes:
    """``blob`` (a serialized safetensors file) with the digest of its data in the metadata."""
    header, start = _safetensors_split(blob, Path("model"))
    meta = dict(header.get("__metadata__") or {})
    meta[DIGEST_KEY] = hashlib.sha256(memoryview(blob)[start:]).hexdigest()
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw + blob[start:]


def verify_safetensors(blob: bytes | memoryview, path: Path) -> None:
    """ModelError when the data section does not match the digest in the header."""
    header, start = _safetensors_split(blob, path)
    expected = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if expected is not None and hashlib.sha256(blob[start:]).hexdigest() != expected:
        raise damaged(path)


def damaged(path: Path) -> ModelError:
    return ModelError(
        f"The weights in {path} are damaged: their checksum does not match the one the file "
        "was written with.",
        "Copy or download the file again, re-export it, or use the bundled model (`default`).",
    )


# --- ONNX: ModelProto fields, protobuf wire format ---------------------------------------

_GRAPH, _METADATA, _PRODUCER = 7, 14, 2  # ModelProto field numbers


def _varint(blob: bytes | memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(blob) or shift > 63:
            raise ValueError("truncated varint")
        b = blob[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(blob: bytes | memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each top-level field; the payload of a
    length-delimited field is ``blob[start:end]``."""
    i = 0
    while i < len(blob):
        start = i
        tag, i = _varint(blob, i)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, i = _varint(blob, i)
            yield number, wire, start, i
        elif wire == 1:
            i += 8
            yield number, wire, start, i
        elif wire == 2:
            n, i = _varint(blob, i)
            if i + n > len(blob):
                raise ValueError("truncated field")
            yield number, wire, i, i + n
            i += n
        elif wire == 5:
            i += 4
            yield number, wire, start, i
        else:
            raise ValueError(f"unknown wire type {wire}")
        if i > len(blob):
            raise ValueError("truncated field")


def _string_entry(payload: bytes | memoryview) -> tuple[str, str]:
    key = value = ""
    for number, wire, start, end in _fields(payload):
        if wire == 2 and number in (1, 2):
            text = bytes(payload[start:end]).decode("utf-8")
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def _onnx_error(path: Path, e: Exception) -> ModelError:
    return ModelError(
        f"{path} is not a readable ONNX model (truncated or corrupt?): {e}",
        "Export it again with `faceattr export MODEL --format onnx`, or use the bundled "
        "model (`default`).",
    )


def onnx_metadata(blob: bytes | memoryview, path: Path = Path("model.onnx")) -> dict[str, str]:
    """The ``metadata_props`` of a serialized ONNX model."""
    try:
        return dict(
            _string_entry(blob[s:e]) for n, w, s, e in _fields(blob) if n == _METADATA and w == 2
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise _onnx_error(path, e) from e


def onnx_digest(blob: bytes | memoryview, path: Path = Path("model.onnx")) -> str:
    try:
        graphs = [(s, e) for n, w, s, e in _fields(blob) if n == _GRAPH and w == 2]
    except ValueError as e:
        raise _onnx_error(path, e) from e
    if len(graphs) != 1:
        raise _onnx_error(path, ValueError(f"{len(graphs)} graphs"))
    start, end = graphs[0]
    return hashlib.sha256(blob[start:end]).hexdigest()


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def with_onnx_metadata(blob: bytes, entries: dict[str, str], producer: str | None = None) -> bytes:
    """``blob`` with ``entries`` set in ``metadata_props`` (replacing those keys), the graph's
    digest added, and ``producer_name`` set when given. The graph's bytes are not touched."""
    drop = set(entries) | {DIGEST_KEY}
    kept = bytearray()
    for number, wire, start, end in _fields(blob):
        if wire == 2 and number == _METADATA and _string_entry(blob[start:end])[0] in drop:
            continue
        if wire == 2 and number == _PRODUCER and producer is not None:
            continue
        if wire == 2:  # re-emit the tag and length in front of the payload
            kept += _length_delimited(number, blob[start:end])
        else:
            kept += blob[start:end]
    entries = {**entries, DIGEST_KEY: onnx_digest(blob)}
    for key, value in entries.items():
        entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
        kept += _length_delimited(_METADATA, entry)
    if producer is not None:
        kept += _length_delimited(_PRODUCER, producer.encode())
    return bytes(kept)


def verify_onnx(blob: bytes | memoryview, path: Path) -> dict[str, str]:
    """The file's metadata, after checking its graph against the stored digest and that no
    tensor keeps its data in another file (:func:`onnx_external_data`)."""
    meta = onnx_metadata(blob, path)
    expected = meta.get(DIGEST_KEY)
    if expected is not None and onnx_digest(blob, path) != expected:
        raise damaged(path)
    try:
        external = onnx_external_data(blob)
    except (ValueError, UnicodeDecodeError) as e:
        raise _onnx_error(path, e) from e
    if external:
        shown = ", ".join(f"{name or '(unnamed)'!r} -> {where!r}" for name, where in external[:3])
        more = f" and {len(external) - 3} more" if len(external) > 3 else ""
        raise ModelError(
            f"{path} keeps tensor data in other files ({shown}{more}): ONNX Runtime would read "
            "them from the current folder, and no checksum covers them. faceattr models are "
            "one self-contained file, so it was not opened.",
            "Use the .onnx file `faceattr export` wrote (its weights are inside it), or the "
            "bundled model (`default`).",
        )
    return meta


# Where a TensorProto may sit inside a ModelProto: per message, the fields holding messages
# that can (transitively) hold tensors. TensorProto keeps external data in its fields 13
# (external_data: key/value entries, "location" the file) and 14 (data_location, 1=EXTERNAL).
_WALK = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto: initialization, algorithm
    "function": {7: "node", 11: "attribute"},  # FunctionProto: node, attribute_proto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto: values, indices
}
_TENSOR_NAME, _EXTERNAL_DATA, _DATA_LOCATION = 8, 13, 14
_MAX_DEPTH = 100  # protobuf's own recursion limit


def onnx_external_data(blob: bytes | memoryview) -> list[tuple[str, str]]:
    """``(tensor name, location)`` of every tensor of a serialized ONNX model whose data lives
    in another file: initializers, sparse initializers, node attributes, subgraphs,
    functions and training graphs. ValueError for bytes that are no protobuf message."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, memoryview, int]] = [("model", memoryview(blob), 0)]
    while stack:
        kind, data, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ValueError("messages nested too deep")
        if kind == "tensor":
            external = _external_location(data)
            if external is not None:
                found.append(external)
            continue
        children = _WALK[kind]
        for number, wire, start, end in _fields(data):
            if wire == 2 and number in children:
                stack.append((children[number], data[start:end], depth + 1))
    return found


def _external_location(tensor: memoryview) -> tuple[str, str] | None:
    """``(name, location)`` when a TensorProto says its data is elsewhere, else None."""
    name, location, external = "", "", False
    for number, wire, start, end in _fields(tensor):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(tensor[start:end]).decode("utf-8", "replace")
        elif number == _EXTERNAL_DATA:
            external = True
            if wire == 2:
                key, value = _string_entry(tensor[start:end])
                location = value if key == "location" else location
        elif number == _DATA_LOCATION:  # anything but DEFAULT (0), however it is encoded
            external = external or wire != 0 or _varint(tensor, _varint(tensor, start)[1])[0] != 0
    return (name, location) if external else None
