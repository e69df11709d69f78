"""The ps.json written next to the tables: one model, one entry per table, checked before use.

``sparse_files`` are relative to the config's folder (hps resolves relative paths against the
config file; NVIDIA's HPS resolves them against its working directory, so run it from OUT_DIR
or make them absolute). ``hit_rate_threshold`` is 1.0 so the GPU cache never answers a missed
key with the default vector: lookups are exact.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.config import validate_document
from ..runtime.errors import CheckFailedError

DEFAULT_MAX_BATCH_SIZE = 1024


def build_ps_config(model_name: str, tables: list[dict], max_batch_size: int) -> dict:
    """``tables``: dicts with name, dir (relative), dim, ids_per_sample, default_value."""
    return {
        "supportlonglong": True,
        "models": [
            {
                "model": model_name,
                "sparse_files": [t["dir"] for t in tables],
                "embedding_table_names": [t["name"] for t in tables],
                "embedding_vecsize_per_table": [t["dim"] for t in tables],
                "maxnum_catfeature_query_per_table_per_sample": [
                    t["ids_per_sample"] for t in tables
                ],
                "default_value_for_each_table": [
                    float(t.get("default_value", 0.0)) for t in tables
                ],
                "deployed_device_list": [0],
                "max_batch_size": max_batch_size,
                "hit_rate_threshold": 1.0,
                "gpucache": True,
                "gpucacheper": 1.0,
            }
        ],
    }


def check_ps_config(doc: dict, folder: Path, name: str = "ps.json") -> None:
    """Validate like ``hps validate-config`` (schema, semantics, tables on disk)."""
    result = validate_document(
        doc, source=str(folder / name), base_dir=folder, check_files=True, strict=False
    )
    if not result.ok:
        first = result.errors[0]
        raise CheckFailedError(
            f"the generated ps.json is invalid: {first.one_line()}", location=str(folder / name)
        )
