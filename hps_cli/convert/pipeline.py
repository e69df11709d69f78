"""``hps convert``: open an input, pick its tables, stream them into HPS tables, RocksDB or .npz.

Everything that can be checked without reading rows (format, headers, sizes, names, the
destination) is checked before anything is written. Outputs are atomic: HPS tables and .npz
files are built in a hidden folder beside DST that replaces DST at the end; RocksDB families are
built as SST files first and ingested last (see runtime/persistent/rocksdb_bulk.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..formats import Input, OpenOptions, open_input
from ..formats.base import SourceTable
from ..runtime.atomic import AtomicDirectory, check_destination
from ..runtime.errors import InvalidInputError, NotFoundError
from ..runtime.persistent.rocksdb_bulk import (
    DEFAULT_BUDGET_BYTES,
    build_family,
    check_families,
    ingest_families,
    work_folder,
)
from ..runtime.storage_names import NAME_PATTERN, storage_tag
from .sinks import bulk_source, write_hps, write_npz
from .transforms import Deduplicated, HotFirst, Stream

TARGETS = ("hps", "rocksdb", "npz")
DEDUPE = ("first", "last", "error")


@dataclass
class ConvertOptions:
    src: Path
    dst: Path | None
    source_format: str | None = None
    target: str = "hps"
    model: str | None = None
    tables: tuple[str, ...] = ()
    open_options: OpenOptions = field(default_factory=OpenOptions)
    dedupe: str | None = None  # None: HPS/npz keep duplicates (counted); RocksDB keeps the last
    hot_first: bool | None = None  # None: reorder when the input has meta
    overwrite: bool = False
    dry_run: bool = False
    budget_bytes: int = DEFAULT_BUDGET_BYTES
    allow_non_finite: bool = False  # keep vectors holding NaN/Inf (refused by default)
    compact: bool = False  # --to rocksdb: compact replaced families (frees the old files now)


@dataclass
class TableResult:
    name: str
    source: str
    rows_in: int
    rows_out: int
    dim: int
    bytes: int
    duplicates: int | None
    dropped: int
    reordered: bool
    seconds: float
    output: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "rows_in": self.rows_in,
            "rows": self.rows_out,
            "dim": self.dim,
            "bytes": self.bytes,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "reordered_hot_first": self.reordered,
            "seconds": round(self.seconds, 3),
            "output": self.output,
            **({"details": self.details} if self.details else {}),
        }


@dataclass
class ConvertResult:
    src: str
    dst: str | None
    format: str
    detected: bool
    target: str
    dry_run: bool
    tables: list[TableResult]
    skipped: list[dict]
    seconds: float
    input_bytes: int

    @property
    def rows(self) -> int:
        return sum(t.rows_out for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "ok": True,
            "src": self.src,
            "dst": self.dst,
            "format": self.format,
            "format_detected": self.detected,
            "to": self.target,
            "dry_run": self.dry_run,
            "tables": [t.to_dict() for t in self.tables],
            "skipped": self.skipped,
            "totals": {
                "tables": len(self.tables),
                "rows": self.rows,
                "bytes": self.bytes,
                "input_bytes": self.input_bytes,
                "seconds": round(self.seconds, 3),
                "MB_per_s": round(self.mb_per_s, 1),
                "duplicates": sum(t.duplicates or 0 for t in self.tables),
            },
        }


def list_tables(
    src: Path, source_format: str | None = None, open_options: OpenOptions | None = None
) -> Input:
    """Open the input and return it (tables described, nothing converted). Close it after use."""
    return open_input(src, source_format, open_options)


def _select(inp: Input, names: tuple[str, ...]) -> list[tuple[SourceTable, str]]:
    """(table, output name) pairs. One ``--table`` name on a one-table input renames it."""
    tables = inp.tables
    if not names:
        return [(t, t.name) for t in tables]
    by_name = {t.name: t for t in tables}
    if len(tables) == 1 and len(names) == 1 and names[0] not in by_name:
        return [(tables[0], names[0])]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NotFoundError(
            f"no table named {', '.join(repr(m) for m in missing)} in the input",
            location=str(inp.path),
            hint="tables: " + ", ".join(sorted(by_name)),
        )
    return [(by_name[n], n) for n in dict.fromkeys(names)]


def _check_names(pairs: list[tuple[SourceTable, str]], src: Path) -> None:
    seen = set()
    for table, name in pairs:
        if not NAME_PATTERN.match(name):
            raise InvalidInputError(
                f"table name '{name}' is not valid for HPS ([A-Za-z0-9_-], 1..120 characters)",
                location=table.location,
                hint="rename it with --table NAME (one table at a time)",
            )
        if name in seen:
            raise InvalidInputError(
                f"two input tables are both named '{name}'",
                location=str(src),
                hint="convert them one at a time with --table",
            )
        seen.add(name)


def _check_options(inp: Input, pairs: list[tuple[SourceTable, str]], opts: ConvertOptions) -> None:
    """Options that do not apply to this input are errors, not silently ignored."""
    given = opts.open_options
    if given.keys is not None and inp.format not in ("npy", "hdf5"):
        raise InvalidInputError(
            f"--keys applies to .npy and HDF5 inputs, not {inp.format}", location=str(inp.path)
        )
    if given.dataset is not None and inp.format != "hdf5":
        raise InvalidInputError(
            f"--dataset applies to HDF5 inputs, not {inp.format}", location=str(inp.path)
        )
    if given.dim is not None:
        for table, _ in pairs:
            if table.dim != given.dim:
                raise InvalidInputError(
                    f"--dim {given.dim} was given but the table has dim {table.dim}",
                    location=table.location,
                )


def _checksum(table: SourceTable) -> str:
    """What the RocksDB record stores to recognise this input: the HPS sidecar checksum of an
    HPS table (computed if its sidecar is stale), else the input files' sizes and mtimes."""
    if table.checksum:
        return table.checksum
    if table.format == "hps":
        from ..formats.hps_table import sidecar_checksum

        return sidecar_checksum(Path(table.location), table.dim)
    parts = []
    for key in sorted(table.details):
        value = table.details[key]
        if isinstance(value, str) and os.path.isfile(value):
            st = os.stat(value)
            parts.append(f"{Path(value).name}:{st.st_size}:{st.st_mtime_ns}")
    if not parts and os.path.exists(table.location.split(":")[0]):
        st = os.stat(table.location.split(":")[0])
        parts.append(f"{Path(table.location).name}:{st.st_size}:{st.st_mtime_ns}")
    return f"source={table.format};" + ";".join(parts)


def _stream(table: SourceTable, opts: ConvertOptions, tmp: Path) -> Stream:
    stream = Stream(table)
    if opts.dedupe in ("first", "last"):
        stream = Deduplicated(stream, opts.dedupe, tmp, opts.budget_bytes)
    hot = table.has_meta if opts.hot_first is None else opts.hot_first
    if hot:
        if not table.has_meta:
            raise InvalidInputError(
                "--hot-first needs per-key access counts ('meta'), which this input does not have",
                location=table.location,
            )
        stream = HotFirst(stream, tmp, opts.budget_bytes)
    return stream


class Plan:
    """An opened and checked conversion: the input's tables, their output names, the
    destination checked. ``run`` converts; ``close`` releases the input (also a context
    manager). Nothing is written before ``run``."""

    def __init__(self, opts: ConvertOptions):
        _check_arguments(opts)
        self.opts = opts
        self.started = time.perf_counter()
        self.input = open_input(opts.src, opts.source_format, opts.open_options)
        try:
            self.pairs = _select(self.input, opts.tables)
            _check_names(self.pairs, self.input.path)
            _check_options(self.input, self.pairs, opts)
            _check_destination(self.pairs, opts)
        except BaseException:
            self.input.close()
            raise

    @property
    def total_bytes(self) -> int:
        """Bytes of converted rows (int64 key + float32 vector) the progress counts."""
        return sum(t.num_rows * (8 + 4 * t.dim) for t, _ in self.pairs)

    def run(self, progress: Callable[[int], None] | None = None) -> ConvertResult:
        opts, progress = self.opts, progress or (lambda n: None)
        if opts.dry_run:
            results = [_planned(table, name, opts) for table, name in self.pairs]
        elif opts.target == "rocksdb":
            results = _to_rocksdb(self.pairs, opts, progress)
        else:
            results = _to_folder(self.pairs, opts, progress)
        inp = self.input
        return ConvertResult(
            str(opts.src),
            str(opts.dst) if opts.dst else None,
            inp.format,
            inp.detected,
            opts.target,
            opts.dry_run,
            results,
            [s.to_dict() for s in inp.skipped],
            time.perf_counter() - self.started,
            sum(t.input_bytes for t, _ in self.pairs),
        )

    def close(self) -> None:
        self.input.close()

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare(opts: ConvertOptions) -> Plan:
    """Open the input and check everything that can be checked without reading rows."""
    return Plan(opts)


def convert(opts: ConvertOptions, progress: Callable[[int], None] | None = None) -> ConvertResult:
    """Run one conversion (see the module doc)."""
    with prepare(opts) as plan:
        return plan.run(progress)


def _check_arguments(opts: ConvertOptions) -> None:
    if opts.target not in TARGETS:
        raise InvalidInputError(
            f"unknown target '{opts.target}'", hint="targets: " + ", ".join(TARGETS)
        )
    if opts.dedupe is not None and opts.dedupe not in DEDUPE:
        raise InvalidInputError(f"unknown --dedupe mode '{opts.dedupe}'")
    if opts.target == "rocksdb" and not opts.model:
        raise InvalidInputError(
            "--to rocksdb needs --model NAME: families are named hps_et.<model>.<table>",
            location=str(opts.dst),
        )
    if opts.compact and opts.target != "rocksdb":
        raise InvalidInputError(
            "--compact applies to --to rocksdb", hint="drop --compact, or add --to rocksdb"
        )
    if opts.model and not NAME_PATTERN.match(opts.model):
        raise InvalidInputError(
            f"model name '{opts.model}' is not valid for HPS ([A-Za-z0-9_-], 1..120 characters)"
        )


def _input_paths(pairs: list[tuple[SourceTable, str]], opts: ConvertOptions) -> list[Path]:
    """Every path the conversion reads: SRC, --keys, and the files its tables name."""
    paths = [Path(opts.src)]
    if opts.open_options.keys is not None:
        paths.append(Path(opts.open_options.keys))
    for table, _ in pairs:
        for value in table.details.values():
            if isinstance(value, str) and os.path.exists(value):
                paths.append(Path(value))
    return paths


def _check_apart(pairs: list[tuple[SourceTable, str]], opts: ConvertOptions) -> None:
    """DST must neither be, nor contain, nor lie inside any input (symlinks resolved): writing
    there would change the input, and --overwrite would delete it or its neighbours."""
    dst = Path(opts.dst).resolve()
    for path in _input_paths(pairs, opts):
        src = path.resolve()
        if dst == src:
            relation = "is the input"
        elif src in dst.parents:
            relation = f"lies inside the input {path}"
        elif dst in src.parents:
            relation = f"contains the input {path} (--overwrite would delete it)"
        else:
            continue
        raise InvalidInputError(
            f"the destination {relation}",
            location=str(opts.dst),
            hint="choose a destination outside the input, and not a folder that holds it",
        )


def _check_destination(pairs: list[tuple[SourceTable, str]], opts: ConvertOptions) -> None:
    if opts.dst is not None:
        _check_apart(pairs, opts)
    if opts.target == "rocksdb":
        check_families(opts.dst, [storage_tag(opts.model, n) for _, n in pairs], opts.overwrite)
        dst = Path(opts.dst)
        if dst.exists() and not (dst / "CURRENT").exists() and any(dst.iterdir()):
            raise InvalidInputError(
                "the destination is a non-empty folder that is not a RocksDB database",
                location=str(opts.dst),
            )
    else:
        check_destination(opts.dst, opts.overwrite)


def _planned(table: SourceTable, name: str, opts: ConvertOptions) -> TableResult:
    """What a dry run reports for one table."""
    hot = table.has_meta if opts.hot_first is None else opts.hot_first
    return TableResult(
        name,
        table.location,
        table.num_rows,
        table.num_rows,
        table.dim,
        table.num_rows * table.row_bytes,
        None,
        0,
        bool(hot) and opts.target != "rocksdb",
        0.0,
        _output_path(opts, name),
        table.details,
    )


def _output_path(opts: ConvertOptions, name: str) -> str:
    if opts.target == "rocksdb":
        return f"{opts.dst}:{storage_tag(opts.model, name)}"
    if opts.target == "npz":
        return str(Path(opts.dst) / f"{name}.npz")
    return str(Path(opts.dst) / name)


def _source_info(table: SourceTable) -> dict:
    return {
        "converted_from": table.location,
        "format": table.format,
        **{k: v for k, v in table.details.items() if isinstance(v, (str, int))},
    }


def _to_folder(pairs, opts: ConvertOptions, progress) -> list[TableResult]:
    work = AtomicDirectory(opts.dst, overwrite=opts.overwrite)
    results = []
    try:
        for table, name in pairs:
            started = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=work.path))
            try:
                stream = _stream(table, opts, tmp)
                if opts.target == "hps":
                    summary = write_hps(
                        stream,
                        work.path / name,
                        _source_info(table),
                        progress,
                        opts.allow_non_finite,
                    )
                    rows, size, stats = summary.num_keys, summary.bytes, summary.duplicates
                else:
                    rows, size, stats = write_npz(
                        stream, work.path / f"{name}.npz", tmp, progress, opts.allow_non_finite
                    )
                dups = stats.extra_rows if stats else 0
                if opts.dedupe == "error" and dups:
                    raise InvalidInputError(
                        f"{dups} duplicate key row(s), e.g. key "
                        f"{stats.examples[0] if stats.examples else '?'}",
                        location=table.location,
                        hint="pass --dedupe first or --dedupe last to keep one row per key",
                    )
                found = stream.duplicates if stream.duplicates is not None else dups
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            results.append(
                TableResult(
                    name,
                    table.location,
                    table.num_rows,
                    rows,
                    table.dim,
                    size,
                    found,
                    stream.dropped,
                    stream.reordered,
                    time.perf_counter() - started,
                    _output_path(opts, name),
                    table.details,
                )
            )
        work.commit()
    except BaseException:
        work.abort()
        raise
    return results


def _to_rocksdb(pairs, opts: ConvertOptions, progress) -> list[TableResult]:
    dedupe = opts.dedupe or "last"
    work = work_folder(opts.dst)
    try:
        built, timings = [], []
        for i, (table, name) in enumerate(pairs):
            started = time.perf_counter()
            tag = storage_tag(opts.model, name)
            source = bulk_source(Stream(table), tag, _checksum(table), opts.allow_non_finite)
            built.append(
                build_family(
                    source,
                    work / f"sst{i}",
                    dedupe=dedupe,
                    budget_bytes=opts.budget_bytes,
                    progress=progress,
                )
            )
            timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        ingest_families(
            opts.dst, built, overwrite=opts.overwrite, staging=work, compact=opts.compact
        )
        ingest = (time.perf_counter() - started) / max(1, len(built))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [
        TableResult(
            name,
            table.location,
            table.num_rows,
            b.num_keys,
            b.dim,
            b.bytes,
            b.duplicates,
            b.duplicates,
            False,
            t + ingest,
            _output_path(opts, name),
            table.details,
        )
        for (table, name), b, t in zip(pairs, built, timings)
    ]
