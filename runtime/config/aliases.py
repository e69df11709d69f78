"""The spellings HPS accepts for its enum-like config strings, mapped to one canonical name."""

from __future__ import annotations

VOLATILE_TYPES = {
    "disabled": "disabled",
    "disable": "disabled",
    "none": "disabled",
    "hash_map": "hash_map",
    "hashmap": "hash_map",
    "hash": "hash_map",
    "map": "hash_map",
    "parallel_hash_map": "parallel_hash_map",
    "parallel_hashmap": "parallel_hash_map",
    "parallel_hash": "parallel_hash_map",
    "parallel_map": "parallel_hash_map",
    "multi_process_hash_map": "multi_process_hash_map",
    "multi_process_hashmap": "multi_process_hash_map",
    "multi_process_hash": "multi_process_hash_map",
    "multi_process_map": "multi_process_hash_map",
    "redis_cluster": "redis_cluster",
    "redis": "redis_cluster",
}
PERSISTENT_TYPES = {
    "disabled": "disabled",
    "disable": "disabled",
    "none": "disabled",
    "rocks_db": "rocks_db",
    "rocksdb": "rocks_db",
    "rocks": "rocks_db",
}
UPDATE_SOURCE_TYPES = {
    "null": "null",
    "none": "null",
    "kafka_message_queue": "kafka_message_queue",
    "kafka_mq": "kafka_message_queue",
    "kafka": "kafka_message_queue",
}
OVERFLOW_POLICIES = {
    "evict_random": "evict_random",
    "random": "evict_random",
    "evict_least_used": "evict_least_used",
    "least_used": "evict_least_used",
    "evict_oldest": "evict_oldest",
    "oldest": "evict_oldest",
}
CACHE_TYPES = {"dynamic": "dynamic", "static": "static", "uvm": "uvm", "stochastic": "stochastic"}


def canonical(table: dict[str, str], value: object, default: str) -> str:
    """The canonical spelling of ``value``; HPS falls back to ``default`` for unknown strings."""
    return table.get(value, default) if isinstance(value, str) else default
