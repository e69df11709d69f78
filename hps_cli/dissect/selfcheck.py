"""The self-check: the dissected pieces must reproduce the original model.

With a model: sample inputs (ids drawn from each table's keys, random dense features) go
through the original model, and through "HPS": each lookup reads the written table files
(keys -> vectors, combined like ``SparseLookupLayer`` where the model combines), then the dense
SavedModel loaded back from disk. The largest absolute difference of the outputs must not
exceed the tolerance. Ids are drawn from the keys written: out-of-vocabulary ids get the table's
default value in HPS, which cannot equal the model's OOV row (see keys in docs/dissect.md).
Every written row is also compared with the loaded model's own variable, exactly.

Without a model (bare checkpoints, weights-only files): every written row is compared with the
variable as TensorFlow's own checkpoint reader (or h5py) returns it, for tables up to
``REFERENCE_LIMIT`` bytes; larger ones are reported as skipped, since that reader loads a
tensor whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.tf_loader import import_tensorflow
from ..runtime.errors import CheckFailedError, DependencyMissingError
from ..runtime.table import TableReader
from .dense import load_dense
from .plan import KeyMap, ModelPlan, SparseIds
from .source_types import CHECKPOINT, SAVED_MODEL, Source
from .tables import as_float32

TOLERANCE = 1e-5
SAMPLES = 64
REFERENCE_LIMIT = 256 << 20


class TableLookup:
    """key -> vector lookups in a written table."""

    def __init__(self, path: Path):
        self.reader = TableReader(path)
        self.keys = np.asarray(self.reader.keys())
        self.order = np.argsort(self.keys, kind="stable")
        self.sorted = self.keys[self.order]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(self.sorted, ids), 0, max(0, self.sorted.size - 1))
        rows = self.order[pos]
        missing = self.keys[rows] != ids
        if missing.any():
            raise KeyError(int(ids[missing][0]))
        return rows

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.reader.vectors())[self.rows_of(ids)]

    def close(self) -> None:
        self.reader.close()


def sample_feed(
    plan: ModelPlan,
    table_keys: dict[str, np.ndarray],
    rng: np.random.Generator,
    batch: int = SAMPLES,
) -> dict:
    """Random inputs for the original model; ids come from ``table_keys[variable]``."""
    feed: dict = {}
    feeds_table = {lk.model_input: lk.table_variable for lk in plan.lookups}
    for spec in plan.inputs:
        table = feeds_table.get(spec.name)
        if spec.format == "sparse":
            width = spec.shape[1] if len(spec.shape) > 1 and spec.shape[1] else 4
            keys = table_keys[table] if table else np.arange(2)
            counts = rng.integers(1, width + 1, size=batch)
            indices = np.array(
                [[b, j] for b in range(batch) for j in range(counts[b])], dtype=np.int64
            )
            values = rng.choice(keys, size=len(indices)).astype(spec.dtype)
            feed[spec.name] = SparseIds(indices, values, np.array([batch, width], dtype=np.int64))
            continue
        shape = [batch] + [d if d is not None else 3 for d in spec.shape[1:]]
        if table is not None:
            feed[spec.name] = rng.choice(table_keys[table], size=shape).astype(spec.dtype)
        elif spec.dtype.startswith("float") or spec.dtype.startswith("bfloat"):
            feed[spec.name] = rng.normal(size=shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:  # ids of a table left inside the dense part, or other small integers
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feed


def _combine(rows: list[np.ndarray], combiner: str, dim: int) -> np.ndarray:
    out = np.zeros((len(rows), dim), dtype=np.float64)
    for b, vectors in enumerate(rows):
        if not len(vectors):
            continue
        total = vectors.astype(np.float64).sum(axis=0)
        out[b] = (
            total
            if combiner == "sum"
            else total / len(vectors)
            if combiner == "mean"
            else total / np.sqrt(len(vectors))
        )
    return out.astype(np.float32)


def hps_outputs(
    plan: ModelPlan, feed: dict, lookups: dict[str, TableLookup], dense_dir: Path
) -> dict:
    """The outputs of tables + dense SavedModel for ``feed``."""
    tf = import_tensorflow("the self-check")
    args = {}
    for lk in plan.lookups:
        table = lookups[lk.table_variable]
        value = feed[lk.model_input]
        dim = int(table.reader.dim)
        if isinstance(value, SparseIds):
            rows = [table.vectors(r) for r in value.rows()]
            result = _combine(rows, lk.combiner, dim)
        else:
            ids = np.asarray(value)
            result = table.vectors(ids).reshape(ids.shape + (dim,))
            if lk.combiner != "none":
                result = _combine(list(result.reshape(len(ids), -1, dim)), lk.combiner, dim)
        args[lk.dense_input.name] = tf.constant(result, tf.as_dtype(lk.dense_input.dtype))
    for direct in plan.direct:
        spec = direct.dense_input
        name = direct.model_input
        owner = plan.component_of.get(name, name) if hasattr(plan, "component_of") else name
        value = feed[owner]
        if isinstance(value, SparseIds):
            part = next(k for k, v in plan.input(owner).components.items() if v == name)
            value = getattr(value, part)
        args[spec.name] = tf.constant(value, tf.as_dtype(spec.dtype))
    root, serve = load_dense(dense_dir)
    result = serve(**args)
    del root
    return {k: np.asarray(v) for k, v in result.items()}


def compare_outputs(expected: dict, got: dict) -> float:
    worst = 0.0
    for name, value in expected.items():
        if name not in got:
            raise CheckFailedError(f"the dense part has no output '{name}'")
        a, b = np.asarray(value, dtype=np.float64), np.asarray(got[name], dtype=np.float64)
        if a.shape != b.shape:
            raise CheckFailedError(
                f"output '{name}' has shape {list(b.shape)} from tables + dense "
                f"part but {list(a.shape)} from the model"
            )
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


def written_rows(keys: KeyMap, total_rows: int) -> np.ndarray:
    """The source row of each written table row, in file order (tables.py writes rows ascending)."""
    if keys.source == "row_index":
        return np.arange(total_rows)
    return np.sort(keys.rows)


def tables_match(written: TableLookup, reference: np.ndarray, key_rows: np.ndarray) -> bool:
    """Written row i equals ``reference[key_rows[i]]`` for every row, exactly."""
    vectors = np.asarray(written.reader.vectors())
    return vectors.shape[0] == key_rows.shape[0] and np.array_equal(
        vectors, np.asarray(reference, dtype=np.float32)[key_rows]
    )


def model_check(
    plan: ModelPlan,
    feed: dict,
    expected: dict,
    tables: dict[str, tuple[Path, KeyMap]],
    dense_dir: Path,
) -> dict:
    """Compare tables with the model's variables and tables + dense part with the model."""
    lookups = {var: TableLookup(path) for var, (path, _) in tables.items()}
    try:
        exact = []
        for var, (_, keys) in tables.items():
            reference = plan.table_values(var)
            if not tables_match(lookups[var], reference, written_rows(keys, reference.shape[0])):
                exact.append(var)
        diff = compare_outputs(expected, hps_outputs(plan, feed, lookups, dense_dir))
    finally:
        for lookup in lookups.values():
            lookup.close()
    passed = diff <= TOLERANCE and not exact
    return {
        "status": "passed" if passed else "failed",
        "mode": "model",
        "samples": SAMPLES,
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "tables_equal_model": not exact,
        "note": "ids drawn from the written keys; dense features from N(0, 1)"
        + (f"; rows differ in: {', '.join(exact)}" if exact else ""),
    }


def tables_check(source: Source, tables: dict[str, tuple[Path, KeyMap, object]]) -> dict:
    """Without a model: compare every written row with an independent read of the variable."""
    checked, skipped, wrong = [], [], []
    for var_name, (path, keys, var) in tables.items():
        try:
            reference = reference_tensor(source, var)
        except DependencyMissingError:
            skipped.append(f"{var_name} (TensorFlow not installed)")
            continue
        if reference is None:
            skipped.append(f"{var_name} (over {REFERENCE_LIMIT >> 20} MiB)")
            continue
        lookup = TableLookup(path)
        try:
            ok = tables_match(lookup, reference, written_rows(keys, reference.shape[0]))
        finally:
            lookup.close()
        (checked if ok else wrong).append(var_name)
    status = (
        "failed"
        if wrong
        else "passed"
        if checked and not skipped
        else "partial"
        if checked
        else "skipped"
    )
    note = (
        "no model to run: written rows compared with TensorFlow's checkpoint reader"
        if source.format in (CHECKPOINT, SAVED_MODEL)
        else "no model to run: written rows compared with a whole-dataset h5py read"
    )
    if skipped:
        note += "; not compared: " + ", ".join(skipped)
    if wrong:
        note += "; rows differ in: " + ", ".join(wrong)
    return {
        "status": status,
        "mode": "tables",
        "samples": 0,
        "max_abs_diff": None,
        "tolerance": TOLERANCE,
        "tables_equal_model": not wrong if checked else None,
        "note": note,
    }


def reference_tensor(source: Source, var) -> np.ndarray | None:
    """The variable as an independent reader returns it, or None if too large."""
    if var.nbytes > REFERENCE_LIMIT:
        return None
    if source.format in (CHECKPOINT, SAVED_MODEL):
        tf = import_tensorflow("the table self-check")
        reader = tf.train.load_checkpoint(str(source.reader.prefix))
        value = reader.get_tensor(var.location)
        return np.asarray(value, dtype=np.float32)
    dataset = source._h5[var.location]
    value = dataset[()]
    if var.dtype == "bfloat16":
        value = as_float32(value, var.dtype)
    return np.asarray(value, dtype=np.float32)
