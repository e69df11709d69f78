"""`hps build-graph`: an inference package (Keras model with the HPS layers) from dissect output."""

from __future__ import annotations

from pathlib import Path

import click

from ..output import current_output, json_option


@click.command("build-graph")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--keras",
    "keras_flavour",
    type=click.Choice(["auto", "keras3", "tf_keras"]),
    default="auto",
    show_default=True,
    help="Keras that builds (and later loads) the model; auto: tf_keras when the "
    "source model was written by tf_keras, else Keras 3.",
)
@click.option(
    "--custom-objects",
    "custom_objects",
    multiple=True,
    metavar="MODULE[:ATTR]",
    help="Import MODULE first (e.g. a library that registers custom TensorFlow ops the dense "
    "part uses); repeat. Recorded in the package with what dissect recorded, which is "
    "imported too.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@json_option
@click.pass_context
def build_graph_command(
    ctx, source, out_dir, keras_flavour, custom_objects, overwrite, json_output
) -> None:
    """Build an inference package from SOURCE into OUT_DIR.

    SOURCE: an 'hps dissect' output folder, or a build-graph spec file (JSON naming a dense
    SavedModel, a ps.json and which inputs go to which tables; docs/tf_plugin.md). OUT_DIR gets
    model.keras (HPS LookupLayer/SparseLookupLayer in front of the dense SavedModel; load it
    with hps_cli.tf.load_model), dense/, the tables, ps.json and manifest.json (for hps serve).
    The config is validated first; OUT_DIR is written atomically: nothing is left on error.

    Exit codes: 0 ok, 3 invalid input, 4 OUT_DIR exists (pass --overwrite), 5 TensorFlow missing.
    """
    from ..build_graph import BuildOptions, build_graph
    from ..common.custom_objects import allow_cwd_imports

    out = current_output()
    if custom_objects:
        allow_cwd_imports()
    options = BuildOptions(
        keras=keras_flavour, overwrite=overwrite, custom_objects=tuple(custom_objects)
    )
    with out.progress(None, f"building {out_dir}"):
        result = build_graph(source, out_dir, options)
    for warning in result.warnings:
        out.warn(warning)
    if out.json_mode:
        out.emit_json({"ok": True, **result.to_dict()})
        return
    inference = result.manifest["inference"]
    for layer in inference["layers"]:
        out.line(
            f"{layer['class']} {layer['layer']}: {layer['model_input']} -> table "
            f"{layer['table']} (combiner {layer['combiner']}) -> {layer['dense_input']}"
        )
    ins = ", ".join(i["name"] for i in inference["inputs"])
    outs = ", ".join(o["name"] for o in inference["outputs"])
    out.line(
        f"model: {inference['model_file']} ({inference['keras']} "
        f"{inference['keras_version']}) inputs [{ins}] -> [{outs}]"
    )
    out.line(
        f"wrote {result.out_dir} ({len(result.manifest['tables'])} table(s), "
        f"{result.linked_files} file(s) linked, {result.copied_files} copied) in "
        f"{result.seconds:.1f} s; load it with hps_cli.tf.load_model"
    )
