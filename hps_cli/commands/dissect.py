"""`hps dissect`: split a trained TensorFlow/Keras model into HPS tables and a dense SavedModel."""

from __future__ import annotations

from pathlib import Path

import click

from ..output import current_output, json_option


def _print_listing(out, inventory) -> None:
    from rich.table import Table

    from ..dissect.inspect import describe_evidence, eligible

    src = inventory.source
    out.line(
        f"{src.path}: {src.format}, written by {src.flavour}"
        + (f" {src.keras_version}" if src.keras_version else "")
        + f"; model name '{src.model_name}'"
        + ("" if src.loadable else "; values only (no model to cut)")
    )
    grid = Table(show_edge=False, title_justify="left")
    for name, just in (
        ("variable", "left"),
        ("shape", "left"),
        ("dtype", "left"),
        ("table", "left"),
        ("evidence", "left"),
        ("stored as", "left"),
    ):
        grid.add_column(name, justify=just, overflow="fold")
    from ..dissect.inspect import default_table_name

    for var in inventory.variables:
        if var.kind != "model":
            continue
        candidate = eligible(var) and bool(var.evidence)
        grid.add_row(
            var.name,
            "x".join(map(str, var.shape)) or "scalar",
            var.dtype,
            default_table_name(var)
            if candidate
            else ("(rank 2: --table)" if eligible(var) else ""),
            "; ".join(describe_evidence(e) for e in var.evidence),
            var.location,
        )
    out.render(grid)
    others = [v for v in inventory.variables if v.kind != "model"]
    if others:
        out.line(
            f"not listed: {sum(v.kind == 'optimizer' for v in others)} optimizer variable(s), "
            f"{sum(v.kind == 'bookkeeping' for v in others)} counter/metric variable(s) "
            "(all in --json)"
        )
    for note in inventory.notes:
        if "optimizer variable" not in note:
            out.line(f"note: {note}")


@click.command("dissect")
@click.argument("model_path", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path), required=False)
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="List the variables (real names, shapes, dtypes, table candidates) and stop.",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="VAR[=NAME]",
    help="Write this variable as a table (named NAME); repeat. Default: every "
    "detected embedding table.",
)
@click.option("--model-name", help="Model name in ps.json (default: the model's own name).")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Run the model and tables + dense part on sample inputs; fail if outputs "
    "differ by more than 1e-5.",
)
@click.option(
    "--dense/--no-dense",
    default=None,
    help="Write the dense part (default: when the input is a loadable model).",
)
@click.option("--signature", help="SavedModel signature to cut (default: serving_default).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="max_batch_size in ps.json.",
)
@click.option(
    "--ids-per-sample",
    type=click.IntRange(min=1),
    default=None,
    help="Ids per sample for tables where the model does not tell (tables only, "
    "variable-length inputs).",
)
@click.option(
    "--custom-objects",
    "custom_objects",
    multiple=True,
    metavar="MODULE[:ATTR]",
    help="Import MODULE (its folder on PYTHONPATH or the working directory) and register "
    "ATTR, a dict or list of the model's custom Keras classes, e.g. "
    "deepctr.layers:custom_objects; repeat. Recorded in manifest.json for build-graph, serve "
    "and load_model.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option(
    "--allow-non-finite",
    is_flag=True,
    help="Keep tables whose vectors hold NaN or Inf (refused by default, naming the row).",
)
@json_option
@click.pass_context
def dissect_command(
    ctx,
    model_path,
    out_dir,
    list_only,
    tables,
    model_name,
    check,
    dense,
    signature,
    max_batch_size,
    ids_per_sample,
    custom_objects,
    overwrite,
    allow_non_finite,
    json_output,
) -> None:
    """Split a trained model into HPS tables, a dense SavedModel, ps.json and manifest.json.

    MODEL_PATH: a SavedModel folder, a .keras archive (Keras 3 or tf_keras), a Keras .h5 file
    or a TF2 checkpoint (prefix, .index file or folder). Tables are streamed from the
    checkpoint's data files (memory stays bounded). OUT_DIR is written atomically: nothing is
    left behind on error. Models with custom layers (e.g. from DeepCTR) need --custom-objects,
    or save them as a SavedModel, which dissects without their code.
    """
    from ..common.custom_objects import allow_cwd_imports
    from ..dissect.pipeline import DissectOptions, dissect, list_model

    out = current_output()
    if list_only:
        inventory = list_model(model_path)
        if out.json_mode:
            out.emit_json(inventory.to_dict())
        else:
            _print_listing(out, inventory)
        return
    if out_dir is None:
        raise click.UsageError("OUT_DIR is required (or pass --list)")
    options = DissectOptions(
        tables=tuple(tables),
        model_name=model_name,
        check=check,
        dense=dense,
        overwrite=overwrite,
        max_batch_size=max_batch_size,
        ids_per_sample=ids_per_sample,
        signature=signature,
        custom_objects=tuple(custom_objects),
        allow_non_finite=allow_non_finite,
    )
    if custom_objects:
        allow_cwd_imports()
    with out.progress(None, f"dissecting {model_path}") as advance:
        result = dissect(model_path, out_dir, options, progress=advance)
    for warning in result.warnings:
        out.warn(warning)
    if out.json_mode:
        out.emit_json({"ok": True, **result.to_dict()})
        return
    manifest = result.manifest
    for table in manifest["tables"]:
        out.line(
            f"table {table['name']}: {table['num_keys']:,} keys x dim {table['dim']} "
            f"from {table['variable']} (keys: {table['keys']['source']})"
        )
    if manifest["dense"]:
        dense_doc = manifest["dense"]
        ins = ", ".join(i["name"] for i in dense_doc["inputs"])
        outs = ", ".join(o["name"] for o in dense_doc["outputs"])
        out.line(f"dense: {dense_doc['dir']}/ ({dense_doc['cut']} cut) inputs [{ins}] -> [{outs}]")
    check_doc = manifest["self_check"]
    diff = check_doc.get("max_abs_diff")
    out.line(
        f"self-check: {check_doc['status']}"
        + (f", max difference {diff:.3g}" if diff is not None else "")
        + (f" ({check_doc['note']})" if check_doc.get("note") else "")
    )
    out.line(f"wrote {result.out_dir} (ps.json, manifest.json) in {result.seconds:.1f} s")
