"""Writers of every `hps convert` input format, byte for byte as the real tools lay them out.

Each follows its specification (docs of hps_cli/formats/*, reference/hps_spec.md §3), written
independently of the readers: headers with struct, payloads with NumPy ``tofile``.
"""

from __future__ import annotations

import string
import struct
from pathlib import Path

import numpy as np


def sok_v1_dump(folder: Path, variables: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """``sok.Saver.dump_to_file``: ``<var>_keys.file`` + ``<var>_values.file``, no header."""
    folder.mkdir(parents=True, exist_ok=True)
    for var, (keys, values) in variables.items():
        keys.tofile(folder / f"{var}_keys.file")
        values.astype(np.float32).tofile(folder / f"{var}_values.file")


SOK_DTYPE_INDEX = {
    np.dtype(np.int32): 0,
    np.dtype(np.int64): 1,
    np.dtype(np.uint32): 2,
    np.dtype(np.uint64): 3,
    np.dtype(np.float16): 4,
    np.dtype(np.float32): 5,
    np.dtype(np.float64): 6,
}


def sok_v2_header(file_type: int, dtype_index: int, table_name: str = "", slot: str = "") -> bytes:
    """256-byte right-justified table name, BE uint32 type, 32-byte slot name, BE uint32 dtype."""
    return (
        table_name.rjust(256, " ").encode()
        + file_type.to_bytes(4, "big")
        + slot.rjust(32, " ").encode()
        + dtype_index.to_bytes(4, "big")
    )


def sok_v2_name(var_name: str) -> str:
    for ch in string.punctuation:
        var_name = var_name.replace(ch, "_")
    return var_name


def sok_v2_dump(
    folder: Path,
    variables: dict[str, tuple[np.ndarray, np.ndarray]],
    optimizer: str | None = None,
    slots: tuple[str, ...] = (),
) -> None:
    """``sok.dump(path, vars, optimizer)``: per TF variable name (e.g. ``table0:0``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for var_name, (keys, weights) in variables.items():
        name = sok_v2_name(var_name)
        with open(folder / f"{name}-key", "wb") as f:
            f.write(sok_v2_header(0, SOK_DTYPE_INDEX[keys.dtype]))
            keys.tofile(f)
        with open(folder / f"{name}-weight", "wb") as f:
            f.write(sok_v2_header(1, SOK_DTYPE_INDEX[weights.dtype]))
            weights.tofile(f)
        for slot in slots:
            with open(folder / f"{name}-{optimizer}-{slot}", "wb") as f:
                f.write(sok_v2_header(2, 5, slot=slot))
                np.full(weights.shape, 0.5, dtype=np.float32).tofile(f)


def hugectr_snapshot(
    folder: Path, keys: np.ndarray, vectors: np.ndarray, slot_ids: np.ndarray | None = None
) -> None:
    """``<prefix><i>_sparse_<iter>.model/``: key (int64), emb_vector (float32), slot_id (uint64)."""
    folder.mkdir(parents=True)
    keys.astype("<i8").tofile(folder / "key")
    vectors.astype("<f4").tofile(folder / "emb_vector")
    if slot_ids is not None:
        slot_ids.astype("<u8").tofile(folder / "slot_id")


def embedding_collection(
    folder: Path,
    ec_id: int,
    tables: list[tuple[np.ndarray, np.ndarray]],
    key_dtype=np.int64,
    table_ids: list[int] | None = None,
) -> Path:
    """HugeCTR parameter_IO: meta_data + key<t>/weight<t> with 128-byte int32 headers."""
    path = folder / f"embedding_collection_{ec_id}"
    path.mkdir(parents=True)
    ids = table_ids or list(range(len(tables)))
    head = [
        len(tables),
        0 if np.dtype(key_dtype) == np.uint32 else 1,
        0,
        0,
        max(v.shape[1] for _, v in tables),
    ]
    meta = struct.pack(f"<{5 + len(tables)}i", *head, *ids)
    meta += struct.pack(f"<{len(tables)}Q", *[len(k) for k, _ in tables])
    meta += struct.pack(f"<{len(tables)}i", *[v.shape[1] for _, v in tables])
    (path / "meta_data").write_bytes(meta)
    for t, ((keys, vectors), tid) in enumerate(zip(tables, ids)):
        for kind, name, payload in (
            (1, f"key{t}", keys.astype(key_dtype)),
            (2, f"weight{t}", vectors.astype("<f4")),
        ):
            with open(path / name, "wb") as f:
                f.write(struct.pack("<32i", kind, tid, *([0] * 30)))
                payload.tofile(f)
    return path


def keras2_h5(path: Path, layers: dict[str, np.ndarray], dense: dict[str, np.ndarray]) -> None:
    """A tf_keras ``model.save("x.h5")`` weight layout: model_weights/<layer>/<layer>/<w>:0 with
    ``layer_names`` on model_weights and ``weight_names`` on each layer group."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.21.0"
        f.attrs["model_config"] = '{"class_name": "Functional"}'
        root = f.create_group("model_weights")
        names = ["input_1", *layers, *dense]
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["backend"] = "tensorflow"
        root.attrs["keras_version"] = "2.21.0"
        root.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer, matrix in layers.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = np.array([f"{layer}/embeddings:0".encode()])
            group.create_group(layer).create_dataset("embeddings:0", data=matrix)
        for layer, kernel in dense.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = np.array(
                [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
            )
            sub = group.create_group(layer)
            sub.create_dataset("kernel:0", data=kernel)
            sub.create_dataset("bias:0", data=np.zeros(kernel.shape[1], np.float32))


def read_hps(table: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """An HPS table by its spec: raw int64 keys, float32 rows, optional int64 meta."""
    keys = np.fromfile(table / "key", dtype="<i8")
    vectors = np.fromfile(table / "emb_vector", dtype="<f4").reshape(keys.size, -1)
    meta = np.fromfile(table / "meta", dtype="<i8") if (table / "meta").exists() else None
    return keys, vectors, meta


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary siblings our atomic writers use, left in ``folder``."""
    return [p.name for p in folder.iterdir() if ".hps-tmp-" in p.name or ".hps-old-" in p.name]
