"""`hps build-graph`: an inference package (Keras model with the HPS layers, and a SavedModel
that needs only TensorFlow) from dissect output."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..build_graph.deployable import DEFAULT_MAX_BYTES
from ..common.units import human_bytes
from ..output import current_output, json_option

_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


class ByteSize(click.ParamType):
    """A size in bytes: 1073741824, 500MB, 4GiB, 2G (K/M/G/T: powers of 1000, Ki/Mi/Gi/Ti: 1024)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(value), re.IGNORECASE)
        if not match:
            self.fail(f"{value!r} is not a size (e.g. 4GiB, 500MB, 1073741824)", param, ctx)
        number, unit, binary = match.groups()
        unit = unit.upper()
        scale = 1024 ** " KMGT".index(unit) if binary and unit else _UNITS[unit]
        return int(float(number) * scale)


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
    "--saved-model/--no-saved-model",
    default=True,
    show_default=True,
    help="Also write the deployable SavedModel (stock TensorFlow ops, the tables embedded) "
    "in TF Serving's and Triton's layouts.",
)
@click.option(
    "--saved-model-version",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Version folder of the SavedModel (saved_model/<version>, triton/<model>/<version>).",
)
@click.option(
    "--saved-model-max-size",
    type=ByteSize(),
    default=f"{DEFAULT_MAX_BYTES >> 30}GiB",
    show_default=True,
    help="Refuse when the embedded tables' keys and rows exceed this size (every server "
    "process holds them in memory); larger tables are served from the HPS hierarchy "
    "(hps serve).",
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
    ctx,
    source,
    out_dir,
    keras_flavour,
    custom_objects,
    saved_model,
    saved_model_version,
    saved_model_max_size,
    overwrite,
    json_output,
) -> None:
    """Build an inference package from SOURCE into OUT_DIR.

    SOURCE: an 'hps dissect' output folder, or a build-graph spec file (JSON naming a dense
    SavedModel, a ps.json and which inputs go to which tables; docs/tf_plugin.md). OUT_DIR gets
    model.keras (HPS LookupLayer/SparseLookupLayer in front of the dense SavedModel; load it
    with hps_cli.tf.load_model: lookups through the HPS hierarchy), dense/, the tables, ps.json
    and manifest.json (for hps serve); and saved_model/<version>/, a SavedModel that needs only
    TensorFlow (tables embedded; TF Serving reads saved_model/, Triton triton/).
    The config is validated first; OUT_DIR is written atomically: nothing is left on error.

    Exit codes: 0 ok, 3 invalid input (also: tables above --saved-model-max-size), 4 OUT_DIR
    exists (pass --overwrite), 5 TensorFlow missing.
    """
    from ..build_graph import BuildOptions, build_graph
    from ..common.custom_objects import allow_cwd_imports

    out = current_output()
    if custom_objects:
        allow_cwd_imports()
    options = BuildOptions(
        keras=keras_flavour,
        overwrite=overwrite,
        custom_objects=tuple(custom_objects),
        saved_model=saved_model,
        saved_model_version=saved_model_version,
        saved_model_max_bytes=saved_model_max_size,
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
    deployable = inference.get("saved_model")
    if deployable is not None:
        out.line(
            f"saved model: {deployable['dir']} (TensorFlow only, tables embedded: "
            f"{human_bytes(deployable['raw_bytes'])}; Triton entry {deployable['triton']['dir']})"
        )
    out.line(
        f"wrote {result.out_dir} ({len(result.manifest['tables'])} table(s), "
        f"{result.linked_files} file(s) linked, {result.copied_files} copied) in "
        f"{result.seconds:.1f} s; load it with hps_cli.tf.load_model"
    )
