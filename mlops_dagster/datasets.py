"""Where raw data comes from: files, s3:// objects, or the synthetic Boston Housing generator.

Also the deterministic train/validation split and the CSV encoding that ``s3_dataset`` hashes.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .quality import clip, show_names
from .resources.object_store import ObjectNotFound, ObjectStore

# The recipe's schema (Boston Housing): 13 features, target `medv`.
BOSTON_FEATURES = [
    "crim", "zn", "indus", "chas", "nox", "rm", "age",
    "dis", "rad", "tax", "ptratio", "b", "lstat",
]  # fmt: skip
BOSTON_TARGET = "medv"
PARQUET_MAGIC = b"PAR1"
CHUNK = 1 << 20  # bytes read at a time when a source file is scanned
CHUNK_ROWS = 100_000  # rows read, checked, staged and written at a time (raw_data / s3_dataset config)
SYNTHETIC_BLOCK = 1_000_000  # rows the synthetic source draws at a time
WINDOW_BYTES = 256 << 20  # s3_dataset's shuffle window (rows of the shuffled table held at a time)
MAX_NAME = 500  # characters of a source name quoted in an error


class DataSourceError(ValueError):
    """The data source cannot be read; the message names the source and what to do."""


def synthetic_boston(rows: int = 1000, seed: int = 42) -> pd.DataFrame:
    """A seeded table with the Boston Housing schema and its main relationships.

    Prices rise with rooms (`rm`) and fall with the share of lower-status population (`lstat`),
    crime, pupil/teacher ratio and pollution, as in the real data; a forest reaches R² ≈ 0.8.
    The table is ``iter_synthetic``'s chunks put together.
    """
    if rows <= SYNTHETIC_BLOCK:
        _check_rows(rows)
        return _synthetic_block(rows, _block_rng(seed, 0))
    return pd.concat(list(iter_synthetic(rows, seed, SYNTHETIC_BLOCK)), ignore_index=True)


def _check_rows(rows: int) -> None:
    if rows < 1:
        raise DataSourceError(f"synthetic source needs rows >= 1, got {rows}")


def _block_rng(seed: int, block: int) -> np.random.Generator:
    # Block 0 draws from the seed itself, so up to SYNTHETIC_BLOCK rows are the rows earlier
    # versions generated; later blocks draw from (seed, block), independent of any chunk size.
    return np.random.default_rng(seed if block == 0 else [seed, block])


def iter_synthetic(rows: int, seed: int, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """``synthetic_boston(rows, seed)`` in chunks of ``chunk_rows``; at most two blocks in memory."""
    _check_rows(rows)
    starts = range(0, rows, SYNTHETIC_BLOCK)

    def block(index: int) -> pd.DataFrame:
        return _synthetic_block(min(SYNTHETIC_BLOCK, rows - starts[index]), _block_rng(seed, index))

    # The next block is drawn on another thread (numpy releases the GIL) while this one is used.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthetic") as ahead:
        upcoming = ahead.submit(block, 0)
        for index in range(len(starts)):
            frame = upcoming.result()
            if index + 1 < len(starts):
                upcoming = ahead.submit(block, index + 1)
            for first in range(0, len(frame), chunk_rows):
                yield frame.iloc[first : first + chunk_rows].reset_index(drop=True)


def _synthetic_block(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    crim = np.round(rng.lognormal(-1.0, 1.6, rows), 5)
    zn = np.where(rng.random(rows) < 0.7, 0.0, np.round(rng.uniform(12.5, 100, rows), 1))
    indus = np.round(rng.uniform(0.5, 27.7, rows), 2)
    chas = (rng.random(rows) < 0.07).astype(int)
    nox = np.round(np.clip(0.35 + 0.012 * indus + rng.normal(0, 0.05, rows), 0.38, 0.87), 3)
    rm = np.round(np.clip(rng.normal(6.28, 0.7, rows), 3.5, 8.8), 3)
    age = np.round(np.clip(20 + 90 * nox - 25 + rng.normal(0, 20, rows), 2.9, 100), 1)
    dis = np.round(np.clip(12 - 11 * nox + rng.normal(0, 1.2, rows), 1.1, 12.1), 4)
    rad = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 24], rows, p=[.04, .05, .08, .22, .23, .05, .03, .05, .25])
    tax = np.round(np.where(rad == 24, 666, 190 + 30 * rad + rng.normal(0, 40, rows))).astype(int)
    ptratio = np.round(np.clip(rng.normal(18.5, 2.1, rows), 12.6, 22.0), 1)
    b = np.round(np.clip(396.9 - rng.exponential(20, rows), 0.3, 396.9), 2)
    lstat = np.round(np.clip(35 - 4.2 * rm + 8 * nox + rng.normal(0, 4, rows), 1.7, 38), 2)
    medv = (
        22.5
        + 5.5 * (rm - 6.28)
        + 1.2 * np.maximum(rm - 7.0, 0) ** 2 * 4
        - 0.55 * (lstat - 12.6)
        + 0.012 * (lstat - 12.6) ** 2
        - 0.12 * np.log1p(crim) * 6
        - 0.8 * (ptratio - 18.5)
        - 9 * (nox - 0.55)
        + 2.5 * chas
        + rng.normal(0, 2.0, rows)
    )
    medv = np.round(np.clip(medv, 5.0, 50.0), 1)
    columns = dict(zip(BOSTON_FEATURES, [crim, zn, indus, chas, nox, rm, age, dis, rad, tax, ptratio, b, lstat], strict=True))
    return pd.DataFrame({**columns, BOSTON_TARGET: medv})


@dataclass
class SourceStream:
    """A source being read: what it is, the sha256 of its bytes, and its rows in chunks."""

    description: str  # what is read: a path, a URI, or "synthetic(rows=…, seed=…)"
    sha256: str | None  # of the bytes read; None for synthetic
    chunks: Iterator[pd.DataFrame]  # each with a RangeIndex from 0


@contextmanager
def open_source(
    source: str, store: ObjectStore, rows: int = 1000, seed: int = 42, chunk_rows: int | None = CHUNK_ROWS
) -> Iterator[SourceStream]:
    """Open ``source`` (``synthetic``, an ``s3://`` URI read through the store, or a local path)
    for reading in chunks of ``chunk_rows`` rows (None: the whole table as one chunk).

    An ``s3://`` source is downloaded to a temporary file first, deleted when the block ends.
    """
    source = (source or "").strip()
    if source in ("", "synthetic"):
        _check_rows(rows)
        yield SourceStream(f"synthetic(rows={rows}, seed={seed})", None, iter_synthetic(rows, seed, chunk_rows or rows))
        return
    if source.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="mlops-src-") as tmp:
            local = Path(tmp) / Path(source.rstrip("/")).name
            try:
                store.download(source, local)
            except ObjectNotFound as err:
                raise DataSourceError(
                    f"data source {clip(source, MAX_NAME)} does not exist in the object store ({err}); "
                    "upload it first or point MLOPS_DATA_SOURCE / the `source` config elsewhere"
                ) from err
            with local.open("rb") as handle:
                sha256, chunks = iter_table(handle, source, chunk_rows)
                yield SourceStream(source, sha256, chunks)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise DataSourceError(
            f"data source file not found: {clip(repr(str(path)), MAX_NAME)}; set MLOPS_DATA_SOURCE or the "
            "`source` run config to an existing CSV or Parquet file, an s3:// URI, or 'synthetic'"
        )
    if not path.is_file():
        raise DataSourceError(f"data source {clip(repr(str(path)), MAX_NAME)} is not a file")
    # One open handle for hashing and parsing: the hash is of exactly the bytes parsed.
    with path.open("rb") as handle:
        sha256, chunks = iter_table(handle, str(path), chunk_rows)
        yield SourceStream(str(path.resolve()), sha256, chunks)


@dataclass(frozen=True)
class LoadedSource:
    frame: pd.DataFrame
    description: str  # what was read: a path, a URI, or "synthetic(rows=…, seed=…)"
    sha256: str | None  # of the bytes read; None for synthetic


def load_source(source: str, store: ObjectStore, rows: int = 1000, seed: int = 42) -> LoadedSource:
    """Read all of ``source`` into one table (``open_source`` reads it in chunks)."""
    with open_source(source, store, rows, seed, chunk_rows=None) as stream:
        return LoadedSource(_concat(stream.chunks), stream.description, stream.sha256)


def _concat(chunks: Iterator[pd.DataFrame]) -> pd.DataFrame:
    frames = list(chunks)
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def parse_table(data: bytes, name: str) -> pd.DataFrame:
    """Parse CSV or Parquet bytes (by content, then by name); every error names the source."""
    return read_table(io.BytesIO(data), name)[0]


@dataclass
class _Scan:
    """What one pass over the bytes learns, without keeping them or their decoded text."""

    sha256: str = ""
    size: int = 0
    head: bytes = b""
    blank: bool = True  # only ASCII whitespace so far
    bad_utf8_at: int | None = None  # offset of the first byte that is not UTF-8
    has_nul: bool = False


def _scan(handle: BinaryIO) -> _Scan:
    scan, digest = _Scan(), hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        scan.head = scan.head or chunk[:4]
        scan.blank = scan.blank and not chunk.strip()
        scan.has_nul = scan.has_nul or b"\x00" in chunk
        if scan.bad_utf8_at is None:
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                decoder.decode(chunk)  # validated, then dropped: the text is never held whole
            except UnicodeDecodeError as err:
                scan.bad_utf8_at = scan.size - pending + err.start
        scan.size += len(chunk)
    if scan.bad_utf8_at is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:  # the file ends inside a character
            scan.bad_utf8_at = scan.size - len(decoder.getstate()[0]) + err.start
    scan.sha256 = digest.hexdigest()
    return scan


def read_table(handle: BinaryIO, name: str) -> tuple[pd.DataFrame, str]:
    """Parse a seekable binary file as CSV or Parquet; returns the table and the sha256 of its bytes."""
    sha256, chunks = iter_table(handle, name, None)
    return _concat(chunks), sha256


def iter_table(handle: BinaryIO, name: str, chunk_rows: int | None) -> tuple[str, Iterator[pd.DataFrame]]:
    """The sha256 of a seekable binary file and its rows as CSV or Parquet, ``chunk_rows`` at a time.

    The bytes are scanned first (hash, format, encoding), then parsed in a second read rather than
    held in memory next to their decoded text and the table. Every error names the source; a
    parse error in a later chunk is raised when that chunk is reached.
    """
    label = clip(name, MAX_NAME)
    scan = _scan(handle)
    handle.seek(0)
    if scan.blank:
        raise DataSourceError(f"data source {label} is empty ({scan.size} bytes): it needs a header and rows")
    if scan.head == PARQUET_MAGIC or name.lower().endswith((".parquet", ".pq")):
        return scan.sha256, _parquet_chunks(handle, label, chunk_rows)
    if scan.bad_utf8_at is not None:
        raise DataSourceError(
            f"data source {label} is neither CSV nor Parquet: byte {scan.bad_utf8_at} is not UTF-8 text "
            "and the file does not start with Parquet's 'PAR1' magic"
        )
    if scan.has_nul:
        raise DataSourceError(f"data source {label} is neither CSV nor Parquet: it contains NUL bytes")
    chunks = _csv_chunks(handle, label, chunk_rows)
    first = next(chunks)  # header problems are raised here, before any chunk is handed out
    return scan.sha256, itertools.chain([first], chunks)


def _parquet_chunks(handle: BinaryIO, label: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    def unreadable(err: Exception) -> DataSourceError:
        return DataSourceError(f"data source {label} is not a readable Parquet file: {clip(str(err))}")

    try:
        if chunk_rows is None:
            frames: Iterator[pd.DataFrame] = iter([pd.read_parquet(handle)])
        else:
            parquet = pq.ParquetFile(handle)
            batches = parquet.iter_batches(batch_size=chunk_rows)
            frames = (batch.to_pandas() for batch in batches)
            if parquet.metadata.num_rows == 0:
                frames = iter([parquet.schema_arrow.empty_table().to_pandas()])
    except Exception as err:  # pyarrow raises several types; all mean "not Parquet"
        raise unreadable(err) from err
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as err:
            raise unreadable(err) from err
        # Rows are numbered by position: drop a stored index (keep it as columns when it is named).
        yield frame.reset_index(drop=all(n is None for n in frame.index.names))


def _csv_chunks(handle: BinaryIO, label: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    try:
        # compression=None: the format was decided by content, not by a ".gz" in the name.
        reader = pd.read_csv(
            handle, skipinitialspace=True, encoding="utf-8-sig", compression=None, chunksize=chunk_rows
        )
        frames = iter([reader]) if chunk_rows is None else iter(reader)
        expected_start = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            _check_csv_chunk(frame, label, expected_start)
            expected_start += len(frame)
            yield frame.reset_index(drop=True)
    except pd.errors.ParserError as err:
        raise DataSourceError(f"data source {label} is not valid CSV: {clip(str(err))}") from err


def _check_csv_chunk(frame: pd.DataFrame, label: str, start: int) -> None:
    index = frame.index
    if not (isinstance(index, pd.RangeIndex) and index.start == start and index.step == 1):
        # pandas takes the first column(s) as the index when rows have more fields than the header,
        # which would shift every value one column to the left.
        raise DataSourceError(
            f"data source {label} is not valid CSV: its rows have more fields than the header's "
            f"{frame.shape[1]} names (a header name missing, or a delimiter at the end of each row?)"
        )
    if frame.shape[1] < 2:
        raise DataSourceError(
            f"data source {label} is not a CSV table: found {frame.shape[1]} column "
            f"({show_names(frame.columns)}); expected a header with the feature and target columns"
        )


def numeric_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The given columns as float64 (after validation, so coercion loses nothing)."""
    return frame[columns].apply(pd.to_numeric, errors="raise").astype("float64")


def split_frame(frame: pd.DataFrame, train_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded shuffle, then the first ``train_fraction`` of rows train and the rest validate."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be between 0 and 1 (exclusive), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(len(frame))
    n_train = int(round(len(frame) * train_fraction))
    n_train = min(max(n_train, 1), len(frame) - 1)
    shuffled = frame.iloc[order].reset_index(drop=True)
    return shuffled.iloc[:n_train].reset_index(drop=True), shuffled.iloc[n_train:].reset_index(drop=True)


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """Stable CSV encoding: header, no index, shortest round-trip floats, '\\n' line ends."""
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


# --- streaming: the checked table staged as float64 rows, then split and written as CSV ----------

FLOAT = np.dtype("<f8")


class StageWriter:
    """Appends the given columns of each chunk, as little-endian float64 rows, to one file.

    Its sha256 covers the column names, the values and the row count: the fingerprint a quality
    verdict is bound to. A cell that is not a number is staged as NaN (its table fails
    ``numeric_columns`` and is never split).
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns, self.rows = path, list(columns), 0
        self._digest = _stage_digest(self.columns)
        self._file = path.open("wb")

    def write(self, chunk: pd.DataFrame) -> None:
        if not len(chunk):
            return
        values = np.empty((len(chunk), len(self.columns)), dtype=FLOAT)
        for position, column in enumerate(self.columns):
            numbers = pd.to_numeric(chunk[column], errors="coerce")
            values[:, position] = numbers.to_numpy(dtype=FLOAT, na_value=np.nan)
        data = memoryview(values).cast("B")
        self._digest.update(data)
        self._file.write(data)
        self.rows += len(chunk)

    def close(self) -> str:
        """Closes the file; returns the fingerprint."""
        self._file.close()
        return _stage_fingerprint(self._digest, self.rows)


def _stage_digest(columns: list[str]) -> hashlib._Hash:
    return hashlib.sha256(json.dumps(["float64-rows", columns]).encode())


def _stage_fingerprint(digest: hashlib._Hash, rows: int) -> str:
    digest.update(rows.to_bytes(8, "big"))
    return digest.hexdigest()


def stage_frame(frame: pd.DataFrame, columns: list[str], path: Path) -> str:
    """Stage a whole table (tests and small tables); returns its fingerprint."""
    writer = StageWriter(path, columns)
    writer.write(frame)
    return writer.close()


def read_stage(path: Path, columns: int, chunk_rows: int) -> Iterator[np.ndarray]:
    """The staged rows, ``chunk_rows`` at a time, as (rows, columns) float64 arrays."""
    with path.open("rb") as handle:
        while True:
            block = np.fromfile(handle, dtype=FLOAT, count=chunk_rows * columns)
            if not block.size:
                return
            yield block.reshape(-1, columns)


def _float_text(values: np.ndarray) -> pa.Array:
    """Each float64 as ``repr`` writes it (what pandas' ``to_csv`` writes), null for NaN.

    Arrow formats the shortest round-trip digits in C++ as Python does. It differs in writing
    integral values without ``.0`` (added here) and in its exponent notation, which it uses
    outside [1e-7, 1e10) while Python uses it outside [1e-4, 1e16): values outside [1e-4, 1e10)
    (rare in tables) and -0.0 are formatted by Python.
    """
    finite = np.isfinite(values)
    magnitude = np.abs(values)
    special = finite & ((magnitude >= 1e10) | (magnitude < 1e-4)) & ((values != 0) | np.signbit(values))
    integral = finite & (values == np.trunc(values)) & ~special
    nulls = np.isnan(values)
    if integral.sum() == finite.sum():  # an integer column: Arrow's integer formatting is cheaper
        whole = np.where(integral, values, 0).astype(np.int64)
        text = pc.cast(pa.array(whole, mask=~integral), pa.string())
        text = pc.binary_join_element_wise(text, ".0", "")
        if not finite.all():  # inf and -inf as pandas writes them
            text = pc.replace_with_mask(text, pa.array(~finite & ~nulls), pa.array([repr(float(v)) for v in values[~finite & ~nulls]], pa.string()))  # fmt: skip
    else:
        text = pc.cast(pa.array(values, mask=nulls), pa.string())
        if integral.any():
            text = pc.if_else(pa.array(integral), pc.binary_join_element_wise(text, ".0", ""), text)
    if special.any():
        exact = pa.array([repr(float(v)) for v in values[special]], pa.string())
        text = pc.replace_with_mask(text, pa.array(special), exact)
    return text


_CSV_BODY = pa_csv.WriteOptions(include_header=False, quoting_style="none")
_FORMATTERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="csv-format")


def csv_rows(values: np.ndarray) -> bytes:
    """Rows of float64 as CSV lines, byte for byte what ``to_csv_bytes`` writes for them (no header).

    Columns are formatted on a thread per core (Arrow and numpy release the GIL).
    """
    if not len(values):
        return b""
    columns = list(_FORMATTERS.map(_float_text, [np.ascontiguousarray(values[:, i]) for i in range(values.shape[1])]))
    table = pa.table(columns, names=[str(i) for i in range(len(columns))])
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink, _CSV_BODY)
    return sink.getvalue()


def csv_header(columns: list[str]) -> bytes:
    """The header line ``to_csv_bytes`` writes (names quoted only when they need it)."""
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(columns)
    return line.getvalue().encode("utf-8")


@dataclass(frozen=True)
class SplitFiles:
    """What ``write_split`` wrote: rows and sha256 per file, and the fingerprint of the staged table it read."""

    rows: dict[str, int]
    sha256: dict[str, str]
    stage_fingerprint: str


class _HashedFile:
    def __init__(self, path: Path) -> None:
        self._file, self.digest = path.open("wb"), hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


def split_positions(rows: int, train_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """Where each row goes, as ``split_frame`` places it: its position in the shuffled table, and the
    number of train rows (positions below it are train, the others validation)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be between 0 and 1 (exclusive), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(rows)
    position = np.empty(rows, dtype=np.int32 if rows < 2**31 else np.int64)
    position[order] = np.arange(rows, dtype=position.dtype)
    n_train = min(max(int(round(rows * train_fraction)), 1), rows - 1)
    return position, n_train


def write_split(
    stage: Path,
    columns: list[str],
    rows: int,
    train_fraction: float,
    seed: int,
    train_path: Path,
    validation_path: Path,
    chunk_rows: int = CHUNK_ROWS,
    window_rows: int | None = None,
    observe: Callable[[np.ndarray], None] | None = None,
) -> SplitFiles:
    """Write ``split_frame``'s train and validation files from a staged table without holding it.

    The shuffled table is written a window of ``window_rows`` output rows at a time: each window
    reads the staged rows in chunks and keeps those whose shuffled position falls in it, so memory
    is one window plus the positions (4 bytes a row). The files are the same bytes whatever the
    chunk and window sizes, and the same as ``to_csv_bytes(split_frame(...))``. ``observe`` sees
    every staged chunk once (for summaries); the stage's fingerprint is computed on the way.
    """
    width = len(columns)
    window_rows = window_rows or max(chunk_rows, WINDOW_BYTES // (8 * max(width, 1)))
    position, n_train = split_positions(rows, train_fraction, seed)
    out = {"train": _HashedFile(train_path), "validation": _HashedFile(validation_path)}
    digest, seen = _stage_digest(columns), 0
    try:
        for name in out:
            out[name].write(csv_header(columns))
        for low in range(0, rows, window_rows):
            high = min(low + window_rows, rows)
            window = np.empty((high - low, width), dtype=FLOAT)
            start = 0
            for block in read_stage(stage, width, chunk_rows):
                if low == 0:  # the first window reads every staged row once: fingerprint, observers
                    digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))
                    seen += len(block)
                    if observe is not None:
                        observe(block)
                where = position[start : start + len(block)]
                keep = (where >= low) & (where < high)
                window[where[keep] - low] = block[keep]
                start += len(block)
            if start != rows:
                raise ValueError(f"staged table {stage} has {start} rows, expected {rows}")
            for first in range(0, high - low, chunk_rows):
                part = window[first : first + chunk_rows]
                cut = min(max(n_train - (low + first), 0), len(part))  # rows of this part that are train
                if cut:
                    out["train"].write(csv_rows(part[:cut]))
                if cut < len(part):
                    out["validation"].write(csv_rows(part[cut:]))
            del window
    finally:
        for handle in out.values():
            handle.close()
    return SplitFiles(
        rows={"train": n_train, "validation": rows - n_train},
        sha256={name: handle.digest.hexdigest() for name, handle in out.items()},
        stage_fingerprint=_stage_fingerprint(digest, seen),
    )
