"""Every implementation of a seam (runtime/seams.py) offers all of its members, with the
parameters the seam names: no type checker runs here, so this keeps the Protocols and the
classes from drifting apart."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers.shm import shared_segment
from hps_cli.runtime import seams
from hps_cli.runtime.gpu.cache_factory import EmbeddingCacheFactory
from hps_cli.runtime.gpu.embedding_cache import DynamicEmbeddingCache, IndexedEmbeddingCache
from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache
from hps_cli.runtime.gpu.gpu_indexed import GpuIndexedTable
from hps_cli.runtime.gpu.ref_backends import RefDynamicBackend, RefIndexedBackend
from hps_cli.runtime.persistent.rocksdb_tier import RocksDbStore
from hps_cli.runtime.table import TableReader
from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table
from hps_cli.runtime.volatile.hash_map import HashMapTable
from hps_cli.runtime.volatile.shm_table import SharedHashMapTable


def _members(protocol: type) -> dict[str, object]:
    """Name → definition (None for a plain attribute) of a protocol and its protocol bases."""
    members: dict[str, object] = {}
    for cls in reversed(protocol.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls.__module__ == "typing":
            continue
        members.update(dict.fromkeys(getattr(cls, "__annotations__", {})))
        members.update({k: v for k, v in vars(cls).items() if not k.startswith("_")})
        if "__call__" in vars(cls):
            members["__call__"] = vars(cls)["__call__"]
    return members


def _parameters(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def assert_implements(obj, protocol: type) -> None:
    """``obj`` has every member of ``protocol``; its methods take the protocol's parameters, by
    name, in order. ``obj`` may be a class whose instances are costly: then only the members
    the class itself defines are checked (not the attributes its instances set)."""
    is_class = isinstance(obj, type)
    for name, definition in _members(protocol).items():
        if is_class and definition is None:
            continue  # an instance attribute (dim, rows, ...)
        assert hasattr(obj, name), f"{obj!r} lacks {protocol.__name__}.{name}"
        if inspect.isfunction(definition) and name != "__call__":
            got = _parameters(getattr(obj, name))
            want = _parameters(definition)
            assert got[: len(want)] == want, f"{protocol.__name__}.{name}: {got} != {want}"
    if "__call__" in _members(protocol):
        want = _parameters(_members(protocol)["__call__"])
        assert _parameters(type(obj).__call__) == want


@pytest.fixture
def reader(tmp_path):
    write_synthetic_table(tmp_path / "t", 200, 4)
    with TableReader(tmp_path / "t") as r:
        yield r


def test_cache_backends(reader):
    assert_implements(RefDynamicBackend(8, 4), seams.DynamicBackend)
    assert_implements(RefIndexedBackend(reader, 50), seams.IndexedBackend)
    # Their GPU twins need a device to be built: checked on the class.
    assert_implements(GpuDynamicCache, seams.DynamicBackend)
    assert_implements(GpuIndexedTable, seams.IndexedBackend)
    assert GpuDynamicCache.on_gpu is True and GpuIndexedTable.on_gpu is True
    assert RefDynamicBackend.on_gpu is False and RefIndexedBackend.on_gpu is False


def test_front_caches_and_their_queries(reader):
    fetch = lambda keys: synthetic_vectors(keys, 4)  # noqa: E731
    dynamic = DynamicEmbeddingCache(
        RefDynamicBackend(8, 4), fetch=fetch, hit_rate_threshold=1.0, default_value=0.0
    )
    indexed = IndexedEmbeddingCache(RefIndexedBackend(reader, 50), default_value=0.0)
    for cache in (dynamic, indexed):
        assert_implements(cache, seams.FrontCache)
        query = cache.launch_query(np.arange(5), 0)
        assert_implements(query, seams.StartedQuery)
        np.testing.assert_array_equal(query.result(), synthetic_vectors(np.arange(5), 4))
    assert dynamic.read_only is False and indexed.read_only is True
    assert_implements(seams.FinishedQuery(np.zeros((0, 4))), seams.StartedQuery)
    assert_implements(EmbeddingCacheFactory(), seams.CacheFactory)


def test_tiers(tmp_path, reader):
    assert_implements(HashMapTable(4), seams.VolatileTable)
    with shared_segment(label="seams") as segment:
        assert_implements(SharedHashMapTable(segment, "hps_et.s.t", 4), seams.VolatileTable)
    store = RocksDbStore(tmp_path / "db")
    try:
        store.load_table("hps_et.m.t", reader, "checksum")
        assert_implements(store.table("hps_et.m.t", 4), seams.PersistentTable)
    finally:
        store.close()


@pytest.mark.redis
def test_redis_table(redis_cluster):
    from hps_cli.runtime.volatile.redis_cluster import RedisClusterStore

    store = RedisClusterStore(redis_cluster.address)
    try:
        assert_implements(store.table("hps_et.seams.t", 4, num_partitions=2), seams.VolatileTable)
    finally:
        store.close()
