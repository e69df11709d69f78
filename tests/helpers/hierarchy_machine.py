"""The whole hierarchy (hash map with eviction → RocksDB → default) against a dict, as a
Hypothesis state machine; test_runtime_redis.py runs it again with Redis as the volatile tier."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hps_cli.runtime import HPS
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from helpers.runtime_configs import make_tables, ps_config, rocks_db


class HierarchyMachine(RuleBasedStateMachine):
    """Every lookup must return the latest vector of a key that was loaded or inserted and not
    removed, else the default — whatever the volatile tier evicted or wrote back."""

    model_name = "m"

    def volatile_block(self) -> dict:
        return {"type": "parallel_hash_map"}

    @initialize(
        policy=st.sampled_from(["evict_random", "evict_least_used", "evict_oldest"]),
        margin=st.integers(1, 6),
        rate=st.sampled_from([0.0, 0.5, 1.0]),
        write_back=st.booleans(),
    )
    def setup(self, policy, margin, rate, write_back):
        self.dir = Path(tempfile.mkdtemp(prefix="hps-hier-sm-"))
        tables = make_tables(self.dir, {"t": (30, 3)})
        volatile = {
            **self.volatile_block(),
            "num_partitions": 2,
            "overflow_margin": margin,
            "overflow_policy": policy,
            "overflow_resolution_target": 0.5,
            "initial_cache_rate": rate,
            "cache_missed_embeddings": write_back,
        }
        doc = ps_config(
            tables,
            {"t": 3},
            model=self.model_name,
            defaults={"t": -9.0},
            persistent=rocks_db(self.dir / "db"),
            volatile=volatile,
        )
        self.runtime = HPS(doc)
        self.margin = margin
        keys = np.arange(30, dtype=np.int64)
        self.model = dict(zip(keys.tolist(), synthetic_vectors(keys, 3)))
        self.version = 0

    @rule(keys=st.lists(st.integers(-5, 40), min_size=1, max_size=10))
    def insert(self, keys):
        self.version += 1
        keys = np.array(keys, dtype=np.int64)
        vectors = synthetic_vectors(keys, 3, seed=self.version)
        self.runtime.insert(self.model_name, "t", keys, vectors)
        for k, v in zip(keys.tolist(), vectors):
            self.model[k] = v

    @rule(keys=st.lists(st.integers(-5, 40), min_size=1, max_size=10))
    def remove(self, keys):
        self.runtime.remove(self.model_name, "t", np.array(keys, dtype=np.int64))
        for k in keys:
            self.model.pop(k, None)

    @rule(keys=st.lists(st.integers(-5, 40), min_size=0, max_size=15))
    def lookup(self, keys):
        out = self.runtime.lookup(np.array(keys, dtype=np.int64), self.model_name, "t")
        for k, row in zip(keys, out):
            expected = self.model.get(k, np.full(3, -9.0, np.float32))
            assert np.array_equal(row, expected), (k, row, expected)
        volatile = self.runtime.table_backend(self.model_name, "t").volatile
        assert (volatile.partition_sizes() <= self.margin).all()

    def teardown(self):
        if hasattr(self, "runtime"):
            volatile = self.runtime.table_backend(self.model_name, "t").volatile
            if hasattr(volatile, "clear"):
                volatile.clear()
            self.runtime.close()
            shutil.rmtree(self.dir, ignore_errors=True)
