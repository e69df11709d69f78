"""`hps table`: inspect, verify and generate HPS table folders."""

from __future__ import annotations

from pathlib import Path

import click

from ..common.units import human_bytes
from ..output import current_output, json_option


@click.group("table")
def table_group() -> None:
    """Inspect, verify and generate HPS tables (folders with `key` and `emb_vector`)."""


def _dups_text(report) -> str:
    dups = report.duplicates
    if dups is None:
        return "?"
    if not dups.extra_rows:
        return "0"
    shown = f" (e.g. {', '.join(map(str, dups.examples))})" if dups.examples else ""
    return f"{dups.extra_rows}{shown}"


def _report_table(reports, title: str):
    from rich.table import Table

    grid = Table(title=title, title_justify="left", show_edge=False)
    for name, just in (
        ("table", "left"),
        ("keys", "right"),
        ("dim", "right"),
        ("size", "right"),
        ("meta", "center"),
        ("duplicates", "right"),
        ("sentinel keys", "right"),
        ("status", "left"),
    ):
        grid.add_column(name, justify=just, overflow="fold")
    for report in reports:
        status = "ok" if report.ok else ", ".join(sorted({d.code for d in report.defects}))
        grid.add_row(
            str(report.path),
            f"{report.num_keys:,}",
            str(report.dim) if report.dim else "?",
            human_bytes(report.layout.total_bytes),
            "yes" if report.layout.meta_bytes is not None else "no",
            _dups_text(report),
            "?" if report.sentinel_keys is None else str(report.sentinel_keys),
            status if report.ok else f"[red]{status}[/red]",
        )
    return grid


def _examine_all(paths, dim, key_width, scan_values, verify: bool, use_sidecar: bool):
    from ..runtime.table import table_info, verify_table
    from ..runtime.table.file_layout import inspect_layout

    out = current_output()
    reports = []
    for path in paths:
        layout = inspect_layout(path, dim)
        total = layout.key_bytes + (layout.vector_bytes if scan_values else 0)
        with out.progress(total, f"{'verifying' if verify else 'reading'} {path}") as advance:
            if verify:
                reports.append(
                    verify_table(
                        path,
                        dim,
                        key_width=key_width,
                        scan_values=scan_values,
                        use_sidecar=use_sidecar,
                        progress=advance,
                    )
                )
            else:
                reports.append(table_info(path, dim, key_width=key_width, progress=advance))
    return reports


_paths = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False)
)
_dim = click.option(
    "--dim",
    type=click.IntRange(min=1),
    default=None,
    help="Expected floats per vector (default: inferred, or from table.json).",
)
_key_width = click.option(
    "--uint32-keys",
    "uint32",
    is_flag=True,
    help="Check keys as HPS narrows them when supportlonglong is false.",
)


@table_group.command("info")
@_paths
@_dim
@_key_width
@json_option
def info_command(paths, dim, uint32, json_output) -> None:
    """Counts, dim, size, duplicates and sentinel keys of each table.

    Reads only the `key` file (or a current table.json), never the vectors.
    """
    out = current_output()
    reports = _examine_all(paths, dim, 32 if uint32 else 64, False, verify=False, use_sidecar=True)
    if out.json_mode:
        out.emit_json({"tables": [r.to_dict() for r in reports]})
    else:
        out.render(_report_table(reports, "HPS tables"))
        for report in reports:
            for defect in report.defects:
                out.warn(f"{defect.location}: {defect.message}")


@table_group.command("verify")
@_paths
@_dim
@_key_width
@click.option(
    "--values/--no-values",
    "scan_values",
    default=True,
    show_default=True,
    help="Also scan every vector for NaN and Inf.",
)
@click.option(
    "--trust-sidecar",
    is_flag=True,
    help="Accept a current table.json's statistics instead of rescanning the keys.",
)
@json_option
@click.pass_context
def verify_command(ctx, paths, dim, uint32, scan_values, trust_sidecar, json_output) -> None:
    """Check each table for every defect HPS would trip over; exit 3 if any is found.

    Checks: files present and non-empty, `key` size a multiple of 8, `emb_vector` size equal to
    keys x dim x 4, `meta` length, no key equal to the GPU cache's empty marker (INT64 max),
    duplicate keys, and (with --values, the default) NaN/Inf in vectors.
    """
    from ..runtime.errors import ExitCode

    out = current_output()
    reports = _examine_all(
        paths, dim, 32 if uint32 else 64, scan_values, verify=True, use_sidecar=trust_sidecar
    )
    bad = [r for r in reports if not r.ok]
    if out.json_mode:
        out.emit_json({"ok": not bad, "tables": [r.to_dict() for r in reports]})
    else:
        out.render(_report_table(reports, "Verification"))
        for report in bad:
            for defect in report.defects:
                click.echo(f"error: {defect.location}: {defect.message}", err=True)
    if bad:
        if not out.json_mode:
            click.echo(f"error: {len(bad)} of {len(reports)} table(s) have defects", err=True)
        ctx.exit(int(ExitCode.INVALID))


@table_group.command("generate")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--keys", "num_keys", type=click.IntRange(min=1), required=True, help="Number of rows."
)
@click.option("--dim", type=click.IntRange(min=1), required=True, help="Floats per vector.")
@click.option("--first-key", type=int, default=0, show_default=True, help="Smallest key.")
@click.option("--shuffle", is_flag=True, help="Write the keys in random order.")
@click.option(
    "--meta",
    "with_meta",
    is_flag=True,
    help="Also write `meta` with Zipf-like access counts, hottest rows first.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists.")
@json_option
def generate_command(
    dest, num_keys, dim, first_key, shuffle, with_meta, seed, overwrite, json_output
) -> None:
    """Write a synthetic table of random vectors (like HPS's model_generator tool)."""
    from ..runtime.table.synthetic import write_synthetic_table

    out = current_output()
    with out.progress(num_keys * (8 + 4 * dim), f"writing {dest}") as advance:
        summary = write_synthetic_table(
            dest,
            num_keys,
            dim,
            first_key=first_key,
            shuffle=shuffle,
            with_meta=with_meta,
            seed=seed,
            overwrite=overwrite,
            progress=advance,
        )
    if out.json_mode:
        out.emit_json(summary.to_dict())
    else:
        out.line(
            f"wrote {summary.path}: {summary.num_keys:,} keys x dim {summary.dim} "
            f"({human_bytes(summary.bytes)}) in {summary.seconds:.2f} s"
        )
