"""Small HPS configs and tables for the runtime tests (synthetic vectors are the oracle)."""

from __future__ import annotations

from pathlib import Path

from hps_cli.runtime.table.synthetic import write_synthetic_table


def make_tables(
    folder: Path,
    specs: dict[str, tuple[int, int]],
    *,
    with_meta: bool = False,
    first_key: int = 0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write one synthetic table per ``name: (num_keys, dim)``; returns name → folder."""
    paths = {}
    for name, (num_keys, dim) in specs.items():
        paths[name] = folder / name
        write_synthetic_table(
            paths[name],
            num_keys,
            dim,
            first_key=first_key,
            shuffle=True,
            with_meta=with_meta,
            seed=seed,
        )
    return paths


def ps_config(
    tables: dict[str, Path],
    dims: dict[str, int],
    *,
    model: str = "m",
    volatile: dict | None = None,
    persistent: dict | None = None,
    defaults: dict[str, float] | None = None,
    supportlonglong: bool = True,
    devices: tuple[int, ...] = (0,),
    gpucache: bool = False,
    **model_extra,
) -> dict:
    """A ps.json document with one model over ``tables`` (absolute paths).

    ``gpucache`` defaults to false here so that the CPU-tier tests see the tiers' own counters;
    the cache tests (test_hps_cache.py) turn it on.
    """
    names = list(tables)
    doc: dict = {
        "supportlonglong": supportlonglong,
        "models": [
            {
                "model": model,
                "sparse_files": [str(tables[n]) for n in names],
                "embedding_table_names": names,
                "embedding_vecsize_per_table": [dims[n] for n in names],
                "maxnum_catfeature_query_per_table_per_sample": [1] * len(names),
                "default_value_for_each_table": [(defaults or {}).get(n, 0.0) for n in names],
                "deployed_device_list": list(devices),
                "max_batch_size": 1024,
                "gpucache": gpucache,
                **model_extra,
            }
        ],
    }
    doc["volatile_db"] = (
        volatile if volatile is not None else {"type": "parallel_hash_map", "num_partitions": 4}
    )
    if persistent is not None:
        doc["persistent_db"] = persistent
    return doc


def rocks_db(path: Path, **extra) -> dict:
    """A ``persistent_db`` block: RocksDB at ``path`` with two threads."""
    return {"type": "rocks_db", "path": str(path), "num_threads": 2, **extra}
