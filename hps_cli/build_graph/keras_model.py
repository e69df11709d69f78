"""The inference Keras model of a manifest: HPS lookup layers in front of the dense SavedModel.

For every model input: a ``keras.Input`` (``sparse=True`` for SparseTensor inputs; id inputs
are int64, so int32 and int64 ids both work; with 32-bit keys a ``KeyCast`` layer range-checks
them into the config's key type), one ``LookupLayer`` per lookup with combiner ``none`` and one
``SparseLookupLayer`` per lookup with a combiner, then a ``DenseSavedModel`` layer fed the
lookup results and pass-through inputs by the dense signature's names. Layers refer to
``ps.json`` and ``dense`` relative to the package, so it can be moved.
"""

from __future__ import annotations

from types import SimpleNamespace


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def build_model(
    manifest: dict, layers: SimpleNamespace, supportlonglong: bool, ps_config_file: str = "ps.json"
):
    """(Keras model, inference ``inputs`` docs, ``layers`` docs) for ``manifest``.

    Call inside ``hps_cli.tf.process_runtime.package_base(package)`` so the relative paths
    resolve while the layers are built.
    """
    keras = layers.keras
    model_name = manifest["model_name"]
    dense = manifest["dense"]
    taken = {spec["name"] for spec in manifest["inputs"]}
    feeds, inputs, input_docs, layer_docs = {}, [], [], []
    for spec in manifest["inputs"]:
        sparse = spec["format"] == "sparse"
        ids = spec["role"] == "sparse_ids"
        dtype = "int64" if ids else spec["dtype"]
        shape = tuple(spec["shape"][1:])
        tensor = keras.Input(shape=shape, dtype=dtype, name=spec["name"], sparse=sparse)
        inputs.append(tensor)
        keys = tensor
        if ids and not supportlonglong:
            keys = layers.KeyCast(name=_unique(f"hps_keys_{spec['name']}", taken))(tensor)
        input_docs.append(
            {
                "name": spec["name"],
                "dtype": dtype,
                "shape": [None, *shape],
                "format": spec["format"],
            }
        )
        for lookup in spec.get("lookups", []):
            table = manifest["tables"][lookup["table_id"]]
            args = dict(
                model_name=model_name,
                table_id=lookup["table_id"],
                emb_vec_size=table["dim"],
                emb_vec_dtype="float32",
                ps_config_file=ps_config_file,
                name=_unique(f"hps_{lookup['dense_input']}", taken),
            )
            if lookup["combiner"] == "none":
                layer = layers.LookupLayer(**args)
                feeds[lookup["dense_input"]] = layer(keys)
            else:
                layer = layers.SparseLookupLayer(**args)
                feeds[lookup["dense_input"]] = layer(keys, combiner=lookup["combiner"])
            layer_docs.append(
                {
                    "layer": layer.name,
                    "class": f"hps>{type(layer).__name__}",
                    "model_input": spec["name"],
                    "table": table["name"],
                    "table_id": lookup["table_id"],
                    "combiner": lookup["combiner"],
                    "dense_input": lookup["dense_input"],
                }
            )
        if "dense_input" in spec:
            feeds[spec["dense_input"]] = tensor
    names = [i["name"] for i in dense["inputs"]]
    outputs = [o["name"] for o in dense["outputs"]]
    part = layers.DenseSavedModel(
        dense["dir"],
        signature=dense["signature"],
        input_names=names,
        output_names=outputs,
        name=_unique("dense_part", taken),
    )
    result = part([feeds[name] for name in names])
    model = keras.Model(inputs, result, name=model_name)
    return model, input_docs, layer_docs
