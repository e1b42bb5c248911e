"""Where raw data comes from: files, s3:// objects, or the synthetic Boston Housing generator.

Also the deterministic train/validation split and the CSV encoding that ``s3_dataset`` hashes.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

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
MAX_NAME = 500  # characters of a source name quoted in an error


class DataSourceError(ValueError):
    """The data source cannot be read; the message names the source and what to do."""


def synthetic_boston(rows: int = 1000, seed: int = 42) -> pd.DataFrame:
    """A seeded table with the Boston Housing schema and its main relationships.

    Prices rise with rooms (`rm`) and fall with the share of lower-status population (`lstat`),
    crime, pupil/teacher ratio and pollution, as in the real data; a forest reaches R² ≈ 0.8.
    """
    if rows < 1:
        raise DataSourceError(f"synthetic source needs rows >= 1, got {rows}")
    rng = np.random.default_rng(seed)
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


@dataclass(frozen=True)
class LoadedSource:
    frame: pd.DataFrame
    description: str  # what was read: a path, a URI, or "synthetic(rows=…, seed=…)"
    sha256: str | None  # of the bytes read; None for synthetic


def load_source(source: str, store: ObjectStore, rows: int = 1000, seed: int = 42) -> LoadedSource:
    """Read ``source``: ``synthetic``, an ``s3://`` URI (through the store) or a local path."""
    source = (source or "").strip()
    if source in ("", "synthetic"):
        return LoadedSource(synthetic_boston(rows, seed), f"synthetic(rows={rows}, seed={seed})", None)
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
                frame, sha256 = read_table(handle, source)
        return LoadedSource(frame, source, sha256)
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
        frame, sha256 = read_table(handle, str(path))
    return LoadedSource(frame, str(path.resolve()), sha256)


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
    """Parse a seekable binary file as CSV or Parquet; returns the table and the sha256 of its bytes.

    The bytes are read twice (a scan, then the parser) rather than held in memory next to their
    decoded text and the table. Every error names the source.
    """
    label = clip(name, MAX_NAME)
    scan = _scan(handle)
    handle.seek(0)
    if scan.blank:
        raise DataSourceError(f"data source {label} is empty ({scan.size} bytes): it needs a header and rows")
    if scan.head == PARQUET_MAGIC or name.lower().endswith((".parquet", ".pq")):
        try:
            frame = pd.read_parquet(handle)
        except Exception as err:  # pyarrow raises several types; all mean "not Parquet"
            raise DataSourceError(f"data source {label} is not a readable Parquet file: {clip(str(err))}") from err
        # Rows are numbered by position: drop a stored index (keep it as columns when it is named).
        return frame.reset_index(drop=all(n is None for n in frame.index.names)), scan.sha256
    if scan.bad_utf8_at is not None:
        raise DataSourceError(
            f"data source {label} is neither CSV nor Parquet: byte {scan.bad_utf8_at} is not UTF-8 text "
            "and the file does not start with Parquet's 'PAR1' magic"
        )
    if scan.has_nul:
        raise DataSourceError(f"data source {label} is neither CSV nor Parquet: it contains NUL bytes")
    try:
        # compression=None: the format was decided by content, not by a ".gz" in the name.
        frame = pd.read_csv(handle, skipinitialspace=True, encoding="utf-8-sig", compression=None)
    except pd.errors.ParserError as err:
        raise DataSourceError(f"data source {label} is not valid CSV: {clip(str(err))}") from err
    if not (isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1):
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
    return frame, scan.sha256


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
