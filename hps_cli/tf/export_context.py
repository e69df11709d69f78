"""While a model is traced for a deployable SavedModel: where its lookups and dense parts go.

``export_saved_model`` traces the model inside ``exporting(tables)``. Meanwhile the HPS lookup
layers look up in ``tables`` (stock TensorFlow ops over variables, static_tables.py) instead of
calling the HPS runtime through ``tf.numpy_function``, and ``DenseSavedModel`` layers hand over
the SavedModel they call (``track``) so that its variables are saved with the export. Outside
the block, nothing changes: lookups go through the runtime.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Protocol

import tensorflow as tf


class LookupTables(Protocol):
    """What the lookup ops ask of an export in progress."""

    def lookup(
        self, ids: tf.Tensor, model_name: str, table_id: int, ps_config_file: str | None
    ) -> tf.Tensor: ...

    def track(self, trackable: object) -> None: ...


_ACTIVE: contextvars.ContextVar[LookupTables | None] = contextvars.ContextVar(
    "hps_tf_export", default=None
)


@contextlib.contextmanager
def exporting(tables: LookupTables) -> Iterator[LookupTables]:
    """Trace in this block to get stock-op lookups into ``tables``."""
    token = _ACTIVE.set(tables)
    try:
        yield tables
    finally:
        _ACTIVE.reset(token)


def active() -> LookupTables | None:
    """The export being traced, or None (lookups go through the HPS runtime)."""
    return _ACTIVE.get()


def track(trackable: object) -> None:
    """Save ``trackable`` (a restored SavedModel a layer calls) with the export being traced."""
    export = _ACTIVE.get()
    if export is not None:
        export.track(trackable)
