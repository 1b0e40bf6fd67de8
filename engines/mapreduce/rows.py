"""Rows of a dataset as Arrow: types, the stable hash, cutting tables into pieces, operation payloads.

Pure: no files, no sockets, no clock. Every function here takes Arrow values
and returns Arrow values (or NumPy arrays), vectorised — no Python loop runs
per row.

- **Types.** ``normalize_schema``/``normalize`` give every table the types a
  dataset stores: ``string_view`` becomes ``string`` and ``binary_view``
  ``binary`` (pyarrow has no ``filter``/``take`` kernels for the view types,
  which current Arrow tools write), dictionary columns are decoded, field
  metadata dropped and every field nullable, so the same rows from Parquet,
  CSV or JSON lines compare equal. Decimals stay decimals, dates and
  timestamps stay what they are.
- **The stable hash.** ``stable_hash(columns)`` is a 64-bit hash per row,
  the same in every process and every run (never Python's salted ``hash``):
  fixed-width values are mixed with SplitMix64's finaliser, strings and
  binaries hashed with FNV-1a a byte position at a time across all rows.
  Ingest places a row by ``hash & (partitions - 1)``; the shuffle puts a
  row in reduce bucket ``hash % reducers``.
- **Pieces.** ``split_by(table, assignment, count)`` cuts a table into one
  table per target with one ``take``; ``slices(table, rows)`` cuts it into
  consecutive slices without copying.
- **Payloads.** ``encode_payload``/``decode_payload``: a table as an Arrow IPC
  stream with LZ4-compressed buffers, the body a batch operation carries
  through the log and the network.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from legion.errors import BadRequest

PAYLOAD_COMPRESSION = "lz4"
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
SPLITMIX_C1 = np.uint64(0xBF58476D1CE4E5B9)
SPLITMIX_C2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
NULL_HASH = np.uint64(0x6A09E667F3BCC909)


# --- types --------------------------------------------------------------------------------


def normalize_type(kind: pa.DataType) -> pa.DataType:
    """The type a dataset stores for ``kind`` (see the module docstring)."""
    if pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_dictionary(kind):
        return normalize_type(kind.value_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = pa.field(kind.value_field.name, normalize_type(kind.value_type))
        return pa.large_list(item) if pa.types.is_large_list(kind) else pa.list_(item)
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, normalize_type(f.type)) for f in kind])
    return kind


def normalize_schema(schema: pa.Schema) -> pa.Schema:
    """Field types normalised, every field nullable, no metadata; BadRequest for unusable names."""
    names = schema.names
    if not names:
        raise BadRequest("the rows have no columns")
    if len(set(names)) != len(names):
        raise BadRequest(f"column names must be unique, got {names}")
    if any(not name for name in names):
        raise BadRequest("every column needs a name")
    return pa.schema([pa.field(f.name, normalize_type(f.type)) for f in schema])


def normalize(table: pa.Table | pa.RecordBatch, schema: pa.Schema | None = None) -> pa.Table:
    """``table`` with the dataset types of ``schema`` (default: its own schema normalised)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    target = schema if schema is not None else normalize_schema(table.schema)
    if table.schema.equals(target, check_metadata=False) and not table.schema.metadata:
        return table
    if table.schema.names != target.names:
        raise BadRequest(f"the rows have columns {table.schema.names}, the dataset has {target.names}")
    try:
        return table.cast(target).replace_schema_metadata(None)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadRequest(f"the rows do not fit the dataset's schema: {exc}") from None


def check_key_column(schema: pa.Schema, key: str) -> None:
    """BadRequest unless ``key`` names a column the stable hash can place rows by."""
    if key not in schema.names:
        raise BadRequest(f"key column {key!r} is not one of the columns {schema.names}")
    kind = schema.field(key).type
    if not _hashable(kind) or pa.types.is_floating(kind):
        raise BadRequest(f"key column {key!r} has type {kind}; use an integer, string, binary, date, time or decimal column")


def _hashable(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_floating(kind)
        or pa.types.is_temporal(kind) or pa.types.is_decimal(kind)
        or pa.types.is_string(kind) or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)
    )  # fmt: skip


# --- the stable hash ----------------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over uint64 values (NumPy arrays wrap on overflow, as wanted)."""
    x = x ^ (x >> np.uint64(30))
    x = x * SPLITMIX_C1
    x = x ^ (x >> np.uint64(27))
    x = x * SPLITMIX_C2
    return x ^ (x >> np.uint64(31))


def stable_hash(columns: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One uint64 per row, combining the hashes of ``columns`` (all of one length)."""
    if not columns:
        raise BadRequest("hashing rows needs at least one column")
    combined: np.ndarray | None = None
    for column in columns:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        parts = [_hash_array(chunk) for chunk in chunks]
        value = np.concatenate(parts) if parts else np.empty(0, np.uint64)
        if combined is None:
            combined = value
        else:
            combined = _mix(combined * GOLDEN + value + np.uint64(1))
    assert combined is not None
    return combined


def _hash_array(array: pa.Array) -> np.ndarray:
    kind = array.type
    if not _hashable(kind):
        raise BadRequest(f"cannot hash a column of type {kind}; group by integer, string, binary, date, time or decimal columns")
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        hashed = _hash_bytes(array, np.int32)
    elif pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        hashed = _hash_bytes(array, np.int64)
    elif pa.types.is_fixed_size_binary(kind) or pa.types.is_decimal(kind):
        hashed = _hash_fixed_bytes(array)
    elif pa.types.is_floating(kind):
        values = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        values = np.where(values == 0.0, 0.0, values)  # -0.0 == 0.0, so they must hash alike
        values = np.where(np.isnan(values), np.nan, values)
        hashed = _mix(values.view(np.uint64))
    else:
        as_int = array.cast(pa.int64()) if not pa.types.is_boolean(kind) else array.cast(pa.int8()).cast(pa.int64())
        hashed = _mix(as_int.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64))
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        hashed = np.where(valid, hashed, NULL_HASH)
    return hashed


def _hash_bytes(array: pa.Array, offset_type: type) -> np.ndarray:
    """FNV-1a over each value's bytes, one byte position per step across all rows still that long."""
    n = len(array)
    _validity, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=array.offset + n + 1)[array.offset :].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    hashed = np.full(n, FNV_OFFSET, dtype=np.uint64)
    active = np.arange(n)
    position = 0
    while active.size:
        active = active[lengths[active] > position]
        if not active.size:
            break
        hashed[active] = (hashed[active] ^ data[starts[active] + position].astype(np.uint64)) * FNV_PRIME
        position += 1
    # The length is mixed in so that values sharing a prefix of zero bytes differ.
    return _mix(hashed ^ lengths.astype(np.uint64))


def _hash_fixed_bytes(array: pa.Array) -> np.ndarray:
    """Fixed-size values (decimals, fixed binaries) as 8-byte words, mixed word by word."""
    width = array.type.byte_width
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)[array.offset * width : (array.offset + len(array)) * width]
    padded_width = -(-width // 8) * 8
    if padded_width != width:
        data = np.pad(data.reshape(-1, width), ((0, 0), (0, padded_width - width))).reshape(-1)
    words = np.ascontiguousarray(data).view(np.uint64).reshape(len(array), padded_width // 8)
    hashed = np.full(len(array), FNV_OFFSET, dtype=np.uint64)
    for column in range(words.shape[1]):
        hashed = _mix(hashed * GOLDEN + words[:, column])
    return hashed


# --- pieces ----------------------------------------------------------------------------


def split_by(table: pa.Table, assignment: np.ndarray, count: int) -> list[pa.Table | None]:
    """One table per target ``0..count-1`` holding the rows assigned to it (None where none are), in row order."""
    if len(assignment) != table.num_rows:
        raise ValueError("one assignment per row")
    counts = np.bincount(assignment, minlength=count)
    if counts.size > count:
        raise ValueError(f"an assignment is outside 0..{count - 1}")
    order = np.argsort(assignment, kind="stable")
    ordered = table.take(pa.array(order))
    ends = np.cumsum(counts)
    pieces: list[pa.Table | None] = []
    for target in range(count):
        size = int(counts[target])
        pieces.append(ordered.slice(int(ends[target]) - size, size) if size else None)
    return pieces


def slices(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    """Consecutive zero-copy slices of at most ``rows`` rows."""
    if rows < 1:
        raise ValueError("a slice holds at least one row")
    for start in range(0, table.num_rows, rows):
        yield table.slice(start, rows)


# --- payloads ----------------------------------------------------------------------------


def encode_payload(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream with compressed buffers."""
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression=PAYLOAD_COMPRESSION)
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_payload(payload: bytes) -> pa.Table:
    """The table of an IPC stream; BadRequest if it is not one."""
    try:
        return ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(f"a batch is not an Arrow IPC stream: {exc}") from None


def schema_bytes(schema: pa.Schema) -> bytes:
    """A schema serialised (Arrow IPC), to carry in a catalog operation."""
    return schema.serialize().to_pybytes()


def schema_of(raw: bytes) -> pa.Schema:
    try:
        return ipc.read_schema(pa.py_buffer(raw))
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(f"not a serialised Arrow schema: {exc}") from None


def describe_schema(schema: pa.Schema) -> list[dict[str, str]]:
    """The schema as ``[{"name", "type"}]`` for JSON answers."""
    return [{"name": f.name, "type": str(f.type)} for f in schema]
