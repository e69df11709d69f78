"""Table fusion (HPS's ``fuse_embedding_table``) and the tables the tiers and caches hold.

With the top-level ``fuse_embedding_table: true``, every model that does not opt out (its own
``fuse_embedding_table: false``) has its tables grouped by vector size, groups in ascending size,
members in table order, as HPS rewrites the config (``fuse_embedding_table_in_json_config``).
Group ``k`` becomes one table named ``fused_embedding<k>`` holding the rows of all its members:

- one storage tag ``hps_et.<model>.fused_embedding<k>`` (its RocksDB column family and Redis
  hashes, the names HPS gives a fused config's storage);
- one embedding cache per device, sized by the group's rows, and one query per group in
  ``HPS.lookup_tables`` / ``lookup_concatenated`` (the members' keys concatenated);
- its default value is its last member's (as HPS; ``fusion_issues`` warns when members differ);
- the model's ``num_of_worker_buffer_in_pool`` becomes max(its value, number of tables)
  (loader.py), as HPS does.

A fused table cannot tell its members apart, so their keys must not overlap
(``key_overlap_issues``, an error with the table files; HPS only asks for it in its log). Lookups
of a member table still name that table; a key of another member of its group finds that
member's row.

``storage_tables(model)`` lists what the tiers hold: without fusion, one per table, named as the
table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..storage_names import storage_tag
from ..table.fused_reader import FusedTableReader
from ..table.reader import TableReader
from .issues import ERROR, WARNING, ConfigIssue, json_path
from .model import ModelConfig, PsConfig

FUSED_NAME = "fused_embedding{}"


@dataclass(frozen=True)
class StorageTable:
    """One table as the tiers and the caches hold it: a table of the model, or with fusion the
    fused group of its tables of one vector size.

    Attributes:
        model: the model's name.
        index: its position among the model's storage tables.
        name: its name in storage tags (the table's own, or ``fused_embedding<k>``).
        dim: floats per vector.
        table_ids: the model's tables it holds, in table order.
        paths: their table folders.
        default_value: the fill value of keys it does not hold.
        fused: True when it is a fused group (even of one table: HPS renames those too).
    """

    model: str
    index: int
    name: str
    dim: int
    table_ids: tuple[int, ...]
    paths: tuple[Path, ...]
    default_value: float
    fused: bool = False

    @property
    def tag(self) -> str:
        """HPS's storage tag: ``hps_et.<model>.<name>``."""
        return storage_tag(self.model, self.name)

    def open(self) -> TableReader | FusedTableReader:
        """A reader of its rows (the caller closes it); members follow each other."""
        if len(self.paths) == 1:
            return TableReader(self.paths[0], self.dim)
        return FusedTableReader(self.paths, self.dim)


@lru_cache(maxsize=256)
def storage_tables(model: ModelConfig) -> tuple[StorageTable, ...]:
    """The model's storage tables, in order (see the module doc)."""
    if not model.fuse_embedding_table:
        return tuple(
            StorageTable(
                model.model,
                t,
                model.table_name(t),
                model.embedding_vecsize_per_table[t],
                (t,),
                (model.table_path(t),),
                model.default_value(t),
            )
            for t in range(model.num_tables)
        )
    groups = _groups_by_dim(model.embedding_vecsize_per_table)
    return tuple(
        StorageTable(
            model.model,
            k,
            FUSED_NAME.format(k),
            dim,
            members,
            tuple(model.table_path(t) for t in members),
            model.default_value(members[-1]),  # HPS keeps the last member's
            fused=True,
        )
        for k, (dim, members) in enumerate(groups)
    )


def _groups_by_dim(dims) -> list[tuple[int, tuple[int, ...]]]:
    """(dim, member table ids) in ascending dim, members in table order."""
    by_dim: dict[int, list[int]] = {}
    for t, dim in enumerate(dims):
        by_dim.setdefault(int(dim), []).append(t)
    return [(dim, tuple(by_dim[dim])) for dim in sorted(by_dim)]


# ---------------------------------------------------------------------------- checks


def fusion_issues(doc: dict) -> list[ConfigIssue]:
    """Warnings about a fused model's config (the raw document; tolerates wrong types)."""
    if doc.get("fuse_embedding_table") is not True or not isinstance(doc.get("models"), list):
        return []
    issues: list[ConfigIssue] = []
    for m, model in enumerate(doc["models"]):
        if not isinstance(model, dict) or model.get("fuse_embedding_table", True) is not True:
            continue
        dims = model.get("embedding_vecsize_per_table")
        defaults = model.get("default_value_for_each_table")
        if not (isinstance(dims, list) and isinstance(defaults, list)):
            continue
        if not all(isinstance(d, int) for d in dims):
            continue
        for k, (dim, members) in enumerate(_groups_by_dim(dims)):
            values = [defaults[t] if t < len(defaults) else 0.0 for t in members]
            if len(set(values)) > 1:
                issues.append(
                    ConfigIssue(
                        WARNING,
                        json_path("models", m, "default_value_for_each_table"),
                        f"tables {list(members)} are fused into '{FUSED_NAME.format(k)}' "
                        f"(dim {dim}) but have different default values {values}: the fused "
                        f"table uses the last one, {values[-1]}, for all of them (as HPS)",
                        "fusion",
                        "give the tables of one vector size the same default value",
                    )
                )
    return issues


def key_overlap_issues(config: PsConfig) -> list[ConfigIssue]:
    """Errors for fused groups whose member tables share keys (reads every member's keys)."""
    issues: list[ConfigIssue] = []
    for m, model in enumerate(config.models):
        for table in storage_tables(model):
            if len(table.table_ids) < 2:
                continue
            issue = _overlap(m, model, table)
            if issue is not None:
                issues.append(issue)
    return issues


def _overlap(m: int, model: ModelConfig, table: StorageTable) -> ConfigIssue | None:
    uniques = []
    for path in table.paths:
        with TableReader(path, table.dim) as reader:
            uniques.append(np.unique(reader.keys()))
    keys = np.concatenate(uniques)
    owner = np.repeat(np.arange(len(uniques)), [u.size for u in uniques])
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    shared = np.flatnonzero(ordered[1:] == ordered[:-1])
    if not shared.size:
        return None
    first = int(shared[0])
    a = table.table_ids[int(owner[order[first]])]
    b = table.table_ids[int(owner[order[first + 1]])]
    count = int(np.unique(ordered[shared]).size)
    return ConfigIssue(
        ERROR,
        json_path("models", m, "sparse_files", b),
        f"{count} key(s) of table '{model.table_name(b)}' are also in table "
        f"'{model.table_name(a)}' (e.g. {int(ordered[first])}): tables fused into "
        f"'{table.name}' (dim {table.dim}) must not share keys",
        "fusion_key_overlap",
        "give each table its own key range, or set this model's fuse_embedding_table to false",
    )
