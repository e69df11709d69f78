"""The HPS table format: one folder per table with ``key``, ``emb_vector`` and optional ``meta``."""

from .duplicates import DuplicateCounter, DuplicateStats
from .file_layout import (
    EMPTY_KEY_INT64,
    EMPTY_KEY_UINT32,
    KEY_DTYPE,
    KEY_FILE,
    META_DTYPE,
    META_FILE,
    SIDECAR_FILE,
    VECTOR_DTYPE,
    VECTOR_FILE,
    Defect,
    TableLayout,
    inspect_layout,
)
from .reader import TableChunk, TableReader, open_table
from .sidecar import Sidecar, current_sidecar, read_sidecar
from .verify import TableReport, table_info, verify_table
from .writer import TableSummary, TableWriter, write_table

__all__ = [
    "DuplicateCounter",
    "DuplicateStats",
    "EMPTY_KEY_INT64",
    "EMPTY_KEY_UINT32",
    "KEY_DTYPE",
    "KEY_FILE",
    "META_DTYPE",
    "META_FILE",
    "SIDECAR_FILE",
    "VECTOR_DTYPE",
    "VECTOR_FILE",
    "Defect",
    "TableLayout",
    "inspect_layout",
    "TableChunk",
    "TableReader",
    "open_table",
    "Sidecar",
    "current_sidecar",
    "read_sidecar",
    "TableReport",
    "table_info",
    "verify_table",
    "TableSummary",
    "TableWriter",
    "write_table",
]
