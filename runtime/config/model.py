"""The typed HPS config: frozen dataclasses with HPS's defaults applied.

Field names are the JSON keys. Enum-like strings are stored in their canonical spelling
(aliases.py). A test checks every default here against the schema's ``default``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

UINT64_MAX = 2**64 - 1


def default_num_partitions() -> int:
    """HPS's default partition count: min(16, hardware threads)."""
    return min(16, os.cpu_count() or 1)


@dataclass(frozen=True)
class VolatileDbConfig:
    type: str = "parallel_hash_map"
    address: str = "127.0.0.1:7000"
    user_name: str = "default"
    password: str = ""
    num_partitions: int = field(default_factory=default_num_partitions)
    allocation_rate: int = 268435456
    shared_memory_size: int = 17179869184
    shared_memory_name: str = "hctr_mp_hash_map_database"
    shared_memory_auto_remove: bool = True
    num_node_connections: int = 5
    max_batch_size: int = 65536
    enable_tls: bool = False
    tls_ca_certificate: str = "cacertbundle.crt"
    tls_client_certificate: str = "client_cert.pem"
    tls_client_key: str = "client_key.pem"
    tls_server_name_identification: str = "redis.localhost"
    overflow_margin: int = UINT64_MAX
    overflow_policy: str = "evict_random"
    overflow_resolution_target: float = 0.8
    initial_cache_rate: float = 1.0
    cache_missed_embeddings: bool = False
    update_filters: tuple[str, ...] = ("^hps_.+$",)
    initialize_after_startup: bool = True

    @property
    def enabled(self) -> bool:
        return self.type != "disabled"

    @property
    def has_overflow_limit(self) -> bool:
        return self.overflow_margin < UINT64_MAX


@dataclass(frozen=True)
class PersistentDbConfig:
    type: str = "disabled"
    path: str = "/tmp/rocksdb"
    num_threads: int = 16
    read_only: bool = False
    max_batch_size: int = 65536
    update_filters: tuple[str, ...] = ("^hps_.+$",)
    initialize_after_startup: bool = True

    @property
    def enabled(self) -> bool:
        return self.type != "disabled"


@dataclass(frozen=True)
class UpdateSourceConfig:
    type: str = "null"
    brokers: str = "127.0.0.1:9092"
    metadata_refresh_interval_ms: int = 30000
    receive_buffer_size: int = 262144
    poll_timeout_ms: int = 500
    max_batch_size: int = 8192
    failure_backoff_ms: int = 50
    max_commit_interval: int = 32


@dataclass(frozen=True)
class ModelConfig:
    model: str
    sparse_files: tuple[str, ...]
    deployed_device_list: tuple[int, ...]
    default_value_for_each_table: tuple[float, ...]
    maxnum_catfeature_query_per_table_per_sample: tuple[int, ...]
    embedding_vecsize_per_table: tuple[int, ...]
    embedding_table_names: tuple[str, ...] = ()
    dense_file: str = ""
    network_file: str = ""
    num_of_worker_buffer_in_pool: int = 1
    num_of_refresher_buffer_in_pool: int = 1
    max_batch_size: int = 64
    maxnum_des_feature_per_sample: int = 26
    refresh_delay: float = 0.0
    refresh_interval: int = 0
    hit_rate_threshold: float = 0.9
    gpucache: bool = True
    gpucacheper: float = 0.2
    cache_refresh_percentage_per_iteration: float = 0.0
    use_static_table: bool = False
    embedding_cache_type: str = "dynamic"
    use_context_stream: bool = True
    use_hctr_cache_implementation: bool = True
    thread_pool_size: int = 16
    init_ec: bool = True
    enable_pagelock: bool = False
    fp8_quant: bool = False
    fuse_embedding_table: bool = False
    label_dim: int = 1
    slot_num: int = 10
    # Where relative sparse_files resolve (the config file's folder); not a JSON key.
    base_dir: str = ""

    @property
    def num_tables(self) -> int:
        return len(self.sparse_files)

    @property
    def cache_type(self) -> str:
        """The effective GPU cache kind (use_static_table forces static, as in HPS)."""
        return "static" if self.use_static_table else self.embedding_cache_type

    def table_name(self, table_id: int) -> str:
        return self.embedding_table_names[table_id]

    def table_id(self, name_or_id: str | int) -> int:
        if isinstance(name_or_id, int):
            return name_or_id
        return self.embedding_table_names.index(name_or_id)

    def table_path(self, table_id: int) -> Path:
        path = Path(self.sparse_files[table_id])
        return path if path.is_absolute() or not self.base_dir else Path(self.base_dir) / path

    def tag(self, table_id: int) -> str:
        """HPS's storage tag of a table: ``hps_et.<model>.<table>`` (with table fusion the
        tiers use its fused table's: fusion.storage_tables)."""
        return f"hps_et.{self.model}.{self.embedding_table_names[table_id]}"

    def default_value(self, table_id: int) -> float:
        """The fill value of missing keys (HPS pads a short list with 0.0)."""
        values = self.default_value_for_each_table
        return float(values[table_id]) if table_id < len(values) else 0.0

    def key_capacity(self, table_id: int) -> int:
        """The most keys one lookup of this table may carry."""
        return self.max_batch_size * self.maxnum_catfeature_query_per_table_per_sample[table_id]


@dataclass(frozen=True)
class PsConfig:
    supportlonglong: bool
    models: tuple[ModelConfig, ...]
    fuse_embedding_table: bool = False
    volatile_db: VolatileDbConfig = field(default_factory=VolatileDbConfig)
    persistent_db: PersistentDbConfig = field(default_factory=PersistentDbConfig)
    update_source: UpdateSourceConfig = field(default_factory=UpdateSourceConfig)
    source_path: str = ""

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.model == name:
                return model
        raise KeyError(name)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.model for m in self.models)

    @property
    def key_dtype(self) -> str:
        return "int64" if self.supportlonglong else "uint32"
