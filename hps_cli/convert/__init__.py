"""``hps convert``: any supported embedding dump into HPS tables, a RocksDB in HPS's layout, or
.npz files, streamed in constant memory and written atomically. See pipeline.py."""

from .pipeline import (
    DEDUPE,
    TARGETS,
    ConvertOptions,
    ConvertResult,
    Plan,
    TableResult,
    convert,
    list_tables,
    prepare,
)

__all__ = [
    "DEDUPE",
    "TARGETS",
    "ConvertOptions",
    "ConvertResult",
    "Plan",
    "TableResult",
    "convert",
    "list_tables",
    "prepare",
]
