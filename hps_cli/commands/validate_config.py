"""`hps validate-config`: check HPS parameter-server configs against schema, semantics and disk."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..output import current_output, json_option


@click.command("validate-config")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option(
    "--check-files/--no-check-files",
    default=True,
    show_default=True,
    help="Verify that each sparse_files entry is a valid table of the configured dim.",
)
@click.option(
    "--allow-non-finite",
    is_flag=True,
    help="Accept tables holding NaN or Inf (as hps serve --allow-non-finite does).",
)
@click.option("--print-schema", is_flag=True, help="Print the JSON Schema (for editors) and exit.")
@json_option
@click.pass_context
def validate_config_command(
    ctx, files, strict, check_files, allow_non_finite, print_schema, json_output
) -> None:
    """Validate HPS configs (ps.json) with the checks hps serve runs at start-up.

    Schema, cross-field rules, what the runtime cannot honour, the tables on disk (structure,
    dims, keys, NaN/Inf) and the RocksDB database of persistent_db (looked at read-only): a
    config is valid exactly when hps serve accepts it, short of the RocksDB lock and the
    Redis Cluster's reachability, which only a start-up can try. Every problem is reported
    with its JSON path, e.g. `$.models[0].embedding_vecsize_per_table[1]`. Unknown keys and
    unknown enum spellings are warnings, because HPS silently ignores them (errors with
    --strict). Relative sparse_files paths resolve against the config file's folder.

    Exit codes: 0 all valid (warnings allowed), 3 at least one config is invalid, 2 usage error.
    """
    from ..runtime.errors import ExitCode
    from ..runtime.preflight import preflight
    from ..runtime.resources import load_schema

    out = current_output()
    if print_schema:
        click.echo(json.dumps(load_schema("ps_config.schema.json"), indent=2))
        return
    if not files:
        raise click.UsageError("give at least one config FILE (or --print-schema)")
    results = [
        preflight(
            f, check_files=check_files, strict=strict, allow_non_finite=allow_non_finite
        ).result
        for f in files
    ]
    if out.json_mode:
        out.emit_json(
            {"valid": all(r.ok for r in results), "configs": [r.to_dict() for r in results]}
        )
    else:
        for result in results:
            for issue in result.issues:
                style = "red" if issue.is_error else "yellow"
                out.err.print(issue.one_line(), style=style, markup=False, highlight=False)
            if result.ok:
                note = (
                    f" ({len(result.warnings)} warning{'s' * (len(result.warnings) != 1)})"
                    if result.warnings
                    else ""
                )
                out.line(f"{result.source}: valid{note}")
            else:
                out.line(
                    f"{result.source}: invalid: {len(result.errors)} error(s), "
                    f"{len(result.warnings)} warning(s)"
                )
    if not all(r.ok for r in results):
        ctx.exit(int(ExitCode.INVALID))
