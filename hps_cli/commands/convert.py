"""`hps convert`: SOK v1/v2, HugeCTR, NumPy, HDF5/Keras 2, HPS tables and RocksDB into HPS tables,
a RocksDB in HPS's layout, or .npz files."""

from __future__ import annotations

from pathlib import Path

import click

from ..common.units import human_bytes
from ..output import current_output, json_option

_FORMATS = ("hps", "rocksdb", "hugectr", "sok-v2", "sok-v1", "npy", "npz", "hdf5")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path), required=False)
@click.option(
    "--from",
    "source_format",
    type=click.Choice(_FORMATS),
    default=None,
    help="Input format (default: detected from what is on disk).",
)
@click.option(
    "--to",
    "target",
    type=click.Choice(("hps", "rocksdb", "npz")),
    default="hps",
    show_default=True,
    help="hps: one table folder per table under DST; rocksdb: column families "
    "hps_et.<model>.<table> in the database DST; npz: DST/<table>.npz.",
)
@click.option(
    "--model",
    help="Model name of the RocksDB families (needed with --to rocksdb; "
    "with a RocksDB input, the model to read).",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="Convert only this table (repeatable). On a one-table input, a new name "
    "renames the table.",
)
@click.option(
    "--dim",
    type=click.IntRange(min=1),
    default=None,
    help="Floats per vector where the input cannot tell (SOK v1), or to check it.",
)
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(path_type=Path),
    help="Keys for a .npy or HDF5 matrix: a .npy file (or an HDF5 dataset path); "
    "default: the row indices.",
)
@click.option("--dataset", help="HDF5 dataset path of the matrix, e.g. /a/b.")
@click.option(
    "--dedupe",
    type=click.Choice(("first", "last", "error")),
    default=None,
    help="Duplicate keys: keep the first or last row, or fail. Default: HPS tables "
    "and npz keep them (counted in the summary); RocksDB keeps the last.",
)
@click.option(
    "--hot-first/--keep-order",
    "hot_first",
    default=None,
    help="Order rows by `meta` (access counts) descending, as HPS pre-fills the GPU "
    "cache in file order. Default: hot-first when the input has `meta`.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace DST (or, with --to rocksdb, the families being written).",
)
@click.option(
    "--compact",
    is_flag=True,
    help="With --to rocksdb --overwrite: compact each replaced family before exiting, which "
    "frees the old table's files now (else the database holds both until RocksDB's next "
    "background compaction, e.g. when hps serve opens it read-write).",
)
@click.option(
    "--allow-non-finite",
    is_flag=True,
    help="Keep vectors holding NaN or Inf (by default the first one fails the conversion, "
    "naming its row and key).",
)
@click.option("--dry-run", is_flag=True, help="Check the input and DST; write nothing.")
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="List the input's tables (e.g. a Keras file's embedding layers) and exit.",
)
@json_option
def convert_command(
    src,
    dst,
    source_format,
    target,
    model,
    tables,
    dim,
    keys_file,
    dataset,
    dedupe,
    hot_first,
    overwrite,
    compact,
    allow_non_finite,
    dry_run,
    list_only,
    json_output,
) -> None:
    """Convert embedding tables from SRC into HPS tables (or RocksDB, or .npz) at DST.

    \b
    Inputs (detected, or --from):
      sok-v1   Saver.dump_to_file: <var>_keys.file + <var>_values.file (uint32 keys widened)
      sok-v2   sok.dump: <name>-key + <name>-weight with 296-byte headers; optimizer
               states are listed and skipped
      hugectr  *_sparse_*.model folders (slot_id dropped), embedding_collection_<id>/
      npy/npz  a matrix (keys = row ids or --keys), or keys + values arrays
      hdf5     --dataset /a/b, or every embedding layer of a Keras 2 .h5
      hps      HPS table folders: re-verified, re-chunked, --dedupe, hot rows first
      rocksdb  a database in HPS's layout (back out to HPS tables or npz)

    Streams in constant memory; outputs are atomic (nothing is left behind on error, SIGINT or
    SIGTERM; leftovers of a killed run are removed by the next run writing there). SRC and DST
    must not contain each other. Vectors holding NaN or Inf are refused unless
    --allow-non-finite.
    Exit codes: 3 invalid input, 4 DST (or a family) exists without --overwrite, 130/143
    interrupted by SIGINT/SIGTERM.
    """
    from ..convert import ConvertOptions, list_tables, prepare
    from ..formats import OpenOptions

    out = current_output()
    open_options = OpenOptions(dim=dim, keys=keys_file, dataset=dataset, model=model)
    if list_only:
        inp = list_tables(src, source_format, open_options)
        try:
            doc = {
                "src": str(src),
                "format": inp.format,
                "format_detected": inp.detected,
                "tables": [t.describe() for t in inp.tables],
                "skipped": [s.to_dict() for s in inp.skipped],
            }
        finally:
            inp.close()
        if out.json_mode:
            out.emit_json(doc)
            return
        out.line(
            f"{src}: {inp.format}{' (detected)' if inp.detected else ''}, "
            f"{len(doc['tables'])} table(s)"
        )
        for t in doc["tables"]:
            out.line(
                f"  {t['name']}: {t['rows']:,} rows x dim {t['dim']}"
                f"{', meta' if t['meta'] else ''}  ({t['location']})"
            )
        for s in doc["skipped"]:
            out.line(f"  skipped {s['path']}: {s['reason']}")
        return
    if dst is None:
        raise click.UsageError("DST is required (or pass --list)")

    options = ConvertOptions(
        src=src,
        dst=dst,
        source_format=source_format,
        target=target,
        model=model,
        tables=tuple(tables),
        open_options=open_options,
        dedupe=dedupe,
        hot_first=hot_first,
        overwrite=overwrite,
        dry_run=dry_run,
        allow_non_finite=allow_non_finite,
        compact=compact,
    )
    with prepare(options) as plan:
        inp = plan.input
        out.info(
            f"input {src}: {inp.format}{' (detected)' if inp.detected else ' (--from)'}, "
            f"{len(plan.pairs)} table(s)"
        )
        with out.progress(
            None if options.dry_run else plan.total_bytes, f"converting {src}"
        ) as advance:
            result = plan.run(advance)
    if out.json_mode:
        out.emit_json(result.to_dict())
        return
    how = "detected" if result.detected else "given"
    verb = "would write" if result.dry_run else "wrote"
    out.line(f"{result.src}: {result.format} ({how}) -> {result.target} {result.dst}")
    for s in result.skipped:
        out.line(f"  skipped {s['path']}: {s['reason']}")
    for t in result.tables:
        dups = "?" if t.duplicates is None else f"{t.duplicates:,}"
        extra = []
        if t.dropped:
            extra.append(f"{t.dropped:,} dropped")
        if t.reordered:
            extra.append("hot-first")
        out.line(
            f"  {t.name}: {t.rows_out:,} rows x dim {t.dim}, {human_bytes(t.bytes)}, "
            f"duplicates {dups}{'; ' + ', '.join(extra) if extra else ''} -> {t.output}"
        )
    out.line(
        f"{verb} {len(result.tables)} table(s), {result.rows:,} rows, {human_bytes(result.bytes)} "
        f"in {result.seconds:.2f} s ({result.mb_per_s:.1f} MB/s of input)"
    )
