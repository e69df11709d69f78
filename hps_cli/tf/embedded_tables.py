"""The tables an export embeds: one ``StaticTable`` per table file a traced lookup reads,
created on first use, under a limit on their bytes (every process serving the SavedModel holds
them in memory; past the limit the HPS hierarchy is the way to serve them).
"""

from __future__ import annotations

import re

import tensorflow as tf

from ..common.units import human_bytes
from ..runtime.errors import HpsError, InvalidInputError
from . import process_runtime
from .errors import LookupInputError
from .static_tables import StaticTable, raw_bytes

DEFAULT_MAX_TABLE_BYTES = 4 << 30  # what every serving process holds in memory, per model


HIERARCHY_HINT = (
    "serve them from the HPS hierarchy instead: 'hps serve' with the package looks them up "
    "through the embedding caches, the volatile tier and RocksDB"
)


def check_table_bytes(
    tables: list[tuple[str, int, int]], limit: int, option: str, instead: str = HIERARCHY_HINT
) -> int:
    """The raw bytes of ``(name, rows, dim)`` tables; raise when they exceed ``limit``
    (``option`` names the limit's setting, ``instead`` what to do rather than embed them)."""
    sizes = [(name, raw_bytes(rows, dim)) for name, rows, dim in tables]
    total = sum(size for _, size in sizes)
    if total > limit:
        biggest = ", ".join(
            f"{name} {human_bytes(size)}" for name, size in sorted(sizes, key=lambda s: -s[1])[:3]
        )
        raise InvalidInputError(
            f"the tables would put {human_bytes(total)} into the SavedModel ({biggest}), above "
            f"the limit of {human_bytes(limit)}: every process serving it holds them all in "
            "memory",
            location=option,
            hint=f"{instead}; or raise {option} if every server has that memory to spare",
        )
    return total


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident[:1].isalpha() else f"t_{ident}"


class EmbeddedTables:
    """The tables an export embeds, one ``StaticTable`` per table file, under a byte limit;
    and the restored SavedModels (dense parts) the traced model calls."""

    def __init__(self, max_bytes: int, option: str = "max_table_bytes"):
        self.max_bytes = int(max_bytes)
        self.option = option
        self.tables: dict[tuple[str, float], StaticTable] = {}
        self.described: list[dict] = []
        self.tracked: list = []
        self.error: HpsError | None = None  # raised inside a trace, where Keras rewraps it

    def track(self, trackable: object) -> None:
        if not any(trackable is t for t in self.tracked):
            self.tracked.append(trackable)

    def lookup(self, ids, model_name: str, table_id: int, ps_config_file: str | None):
        try:
            table = self._table(model_name, table_id, ps_config_file)
        except HpsError as exc:
            self.error = self.error or exc
            raise
        return table.lookup(ids)

    def _table(self, model_name: str, table_id: int, ps_config_file: str | None) -> StaticTable:
        config = process_runtime.config_for(ps_config_file)
        if config is None:
            raise LookupInputError(
                "HPS is not initialized: the export cannot tell which table files to embed",
                location="ps_config_file",
                hint="call hps.Init(global_batch_size, ps_config_file) first, or give the "
                "layers a ps_config_file",
            )
        model = config.model(model_name)  # checked by the layer already
        path = model.table_path(table_id).resolve()
        key = (str(path), model.default_value(table_id))
        table = self.tables.get(key)
        if table is not None:
            return table
        from ..runtime.table import TableReader

        dim = model.embedding_vecsize_per_table[table_id]
        with TableReader(path, dim) as reader:
            rows = reader.num_keys
        name = f"{model.model}/{model.table_name(table_id)}"
        planned = [(t["table"], t["rows"], t["dim"]) for t in self.described]
        check_table_bytes([*planned, (name, rows, dim)], self.max_bytes, self.option)
        with tf.init_scope():  # variables are created eagerly, outside the trace
            table = StaticTable(path, dim, key[1], _identifier(model.table_name(table_id)))
        self.tables[key] = table
        self.described.append(
            {
                "model": model.model,
                "table": name,
                "path": str(path),
                "rows": table.num_keys,
                "dim": table.dim,
                "raw_bytes": table.raw_bytes,
            }
        )
        return table
