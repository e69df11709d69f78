"""A volatile table against a dict model, as a Hypothesis state machine: random insert /
lookup / remove / overflow sequences. test_runtime_hash_map.py runs it on the in-process map
(``HashMapMachine``) and on the shared-memory map (``SharedHashMapMachine``)."""

from __future__ import annotations

import numpy as np
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hps_cli.runtime.volatile.hash_map import POLICIES, HashMapTable
from hps_cli.runtime.volatile.shm_segment import SharedSegment
from hps_cli.runtime.volatile.shm_table import SharedHashMapTable
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from helpers.shm import remove_segment, segment_name

KEYS = st.lists(st.integers(-40, 40), min_size=1, max_size=25)


class HashMapMachine(RuleBasedStateMachine):
    """The table must hold exactly the model's keys (inserted, minus removed, minus what insert
    reported as evicted) with their latest vectors; partitions never exceed the margin."""

    def make_table(self, dim: int, **options):
        return HashMapTable(dim, **options)

    @initialize(
        policy=st.sampled_from(POLICIES),
        parts=st.integers(1, 4),
        margin=st.one_of(st.none(), st.integers(0, 12)),
        resolve=st.sampled_from([0.3, 0.5, 0.8, 1.0]),
    )
    def setup(self, policy, parts, margin, resolve):
        self.dim = 3
        self.margin = margin
        self.table = self.make_table(
            self.dim,
            num_partitions=parts,
            overflow_margin=margin,
            overflow_policy=policy,
            overflow_resolution_target=resolve,
        )
        self.model: dict[int, np.ndarray] = {}
        self.version = 0

    @rule(keys=KEYS)
    def insert(self, keys):
        self.version += 1
        keys = np.array(keys, dtype=np.int64)
        vectors = synthetic_vectors(keys, self.dim, seed=self.version)
        evicted = self.table.insert(keys, vectors)
        for k, v in zip(keys.tolist(), vectors):
            self.model[k] = v
        batch = set(keys.tolist())
        for k in evicted.tolist():
            assert k in self.model, f"evicted key {k} was never held"
            del self.model[k]
        if self.margin is not None and len(batch) <= self.margin:
            # keys of the batch are evicted last: a batch that fits is kept whole
            assert not batch & set(evicted.tolist()) or self.margin == 0

    @rule(keys=KEYS)
    def remove(self, keys):
        removed = self.table.remove(np.array(keys, dtype=np.int64))
        present = {k for k in set(keys) if k in self.model}
        assert removed == len(present)
        for k in present:
            del self.model[k]

    @rule(keys=KEYS)
    def lookup(self, keys):
        keys = np.array(keys, dtype=np.int64)
        out, hit, _ = self.table.get(keys)
        for k, h, row in zip(keys.tolist(), hit, out):
            assert h == (k in self.model)
            if h:
                assert np.array_equal(row, self.model[k])

    @invariant()
    def sizes_match(self):
        if not hasattr(self, "table"):
            return
        assert len(self.table) == len(self.model)
        assert sorted(self.table.keys().tolist()) == sorted(self.model)
        if self.margin is not None:
            assert (self.table.partition_sizes() <= self.margin).all()


class SharedHashMapMachine(HashMapMachine):
    """The same rules on a table in a shared-memory segment of its own."""

    def make_table(self, dim: int, **options):
        self.segment = SharedSegment(segment_name("machine"), 1 << 24)
        return SharedHashMapTable(
            self.segment, "hps_et.machine.t", dim, expected_keys=81, **options
        )

    def teardown(self):
        if hasattr(self, "segment"):
            self.segment.close()
            remove_segment(self.segment.path.name)
