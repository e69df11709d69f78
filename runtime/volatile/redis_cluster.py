"""The distributed volatile tier: a Redis Cluster in HPS's key layout, through redis-py.

Layout (HPS's, storage_names.py): per table tag ``T`` and partition ``p = mix64(key) % P`` two
hashes on one cluster slot: ``hps_et{T/p<p>}v`` (field = raw key bytes, value = raw float32
vector bytes) and ``hps_et{T/p<p>}t`` (access metadata: an LFU counter, or the last access as
an 8-byte little-endian ``time_t`` for LRU). Our bookkeeping (which table file was loaded) is one
string ``hps_cli{T}/record``, which HPS ignores.

Operations are pipelined per call (``HMGET``/``HSET``/``HDEL`` in ``max_batch_size`` chunks, one
pipeline per call; redis-py sends each node its commands together). At most
``num_node_connections`` pipelines run at once, so no node sees more connections than that.
Metadata updates of lookups (LFU/LRU) are queued to a background thread, as HPS does.

Overflow (as HPS: ``HLEN`` after the write): a partition above ``overflow_margin`` loses entries
by policy until its older entries number ``round(margin × overflow_resolution_target)`` (fewer
when the batch's new keys need the room, more when the batch's keys already held would not fit
otherwise); keys of the same batch go last, so as in the hash map a partition ends at most at
the margin. ``insert`` returns the evicted keys.

Failures: a cluster unreachable at start-up raises ServiceUnavailableError. While serving, a
failed command (a dead node, CLUSTERDOWN, a timeout) makes ``get`` report those keys as
``failed`` instead of raising, so the hierarchy falls through to the next tier; after a call
where every command failed, the tier is skipped for ``retry_interval_s`` (the lookups don't pay
for a connection attempt each time), then tried again.
"""

from __future__ import annotations

import json
import logging
import queue
import struct
import threading
import time
from pathlib import Path

import numpy as np

from ..config.addresses import parse_redis_address
from ..cpu_affinity import free_this_thread
from ..errors import ConfigError, DependencyMissingError, ServiceUnavailableError
from ..hashing import partition_of
from ..raw_keys import key_bytes
from ..storage_names import redis_hash_names
from .hash_map import POLICIES, dedupe_last

log = logging.getLogger("hps_cli.runtime.redis")

RECORD_FORMAT = "hps_cli{{{tag}}}/record"
_TOUCH_QUEUE = 64


def _redis():
    try:
        import redis
        import redis.cluster
        import redis.exceptions
    except ImportError as exc:
        raise DependencyMissingError("redis", "redis", "the Redis Cluster volatile tier") from exc
    return redis


def _failures() -> tuple[type[BaseException], ...]:
    """What a failing cluster raises through redis-py."""
    redis = _redis()
    return (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)


def parse_address(address: str) -> list[tuple[str, int]]:
    """``host[:port],host[:port]`` → [(host, port)] (port 7000 when absent, as in HPS's docs)."""
    try:
        return parse_redis_address(address)
    except ValueError as exc:
        raise ConfigError(
            str(exc),
            location="volatile_db.address",
            hint='e.g. "127.0.0.1:7000,127.0.0.1:7001"',
        ) from None


class RedisClusterStore:
    """A connection to the cluster, shared by the tables of every model.

    Args:
        address: HPS's ``volatile_db.address`` (every listed node is used as a start-up node).
        user_name / password: ACL credentials (an empty password: none).
        enable_tls and the tls_* paths: TLS with a CA bundle and a client certificate and key.
        num_node_connections: most pipelines in flight at once.
        max_batch_size: fields per HMGET/HSET/HDEL command.
        socket_timeout_s / connect_timeout_s: per-command limits, so a hung node cannot hang
            a lookup.
        retry_interval_s: after a call in which everything failed, skip the tier this long.

    Raises:
        ServiceUnavailableError: no node answers.
        ConfigError: TLS files are missing, or the address is malformed.
    """

    def __init__(
        self,
        address: str,
        *,
        user_name: str = "default",
        password: str = "",
        enable_tls: bool = False,
        tls_ca_certificate: str = "",
        tls_client_certificate: str = "",
        tls_client_key: str = "",
        tls_server_name_identification: str = "",
        num_node_connections: int = 5,
        max_batch_size: int = 65536,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        retry_interval_s: float = 1.0,
    ):
        redis = _redis()
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry

        self.address = address
        self.max_batch_size = max(1, int(max_batch_size))
        self.retry_interval_s = retry_interval_s
        self._gate = threading.BoundedSemaphore(max(1, int(num_node_connections)))
        self._down_until = 0.0
        self._state_lock = threading.Lock()
        nodes = parse_address(address)
        kwargs: dict = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": connect_timeout_s,
        }
        if password:
            kwargs.update(username=user_name or None, password=password)
        if enable_tls:
            files = {
                "tls_ca_certificate": tls_ca_certificate,
                "tls_client_certificate": tls_client_certificate,
                "tls_client_key": tls_client_key,
            }
            for name, path in files.items():
                if not path or not Path(path).is_file():
                    raise ConfigError(
                        f"TLS is enabled but '{path}' is not a file", location=f"volatile_db.{name}"
                    )
            kwargs.update(
                ssl=True,
                ssl_ca_certs=tls_ca_certificate,
                ssl_certfile=tls_client_certificate,
                ssl_keyfile=tls_client_key,
            )
            if tls_server_name_identification and tls_server_name_identification not in {
                h for h, _ in nodes
            }:
                log.warning(
                    "redis-py sends each node's host name for SNI; "
                    "tls_server_name_identification=%r is not sent",
                    tls_server_name_identification,
                )
        try:
            self.client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
                **kwargs,
            )
            self.client.ping(target_nodes=RedisCluster.PRIMARIES)
        except redis.exceptions.AuthenticationError as exc:
            raise ServiceUnavailableError(
                f"Redis refused the credentials: {exc}",
                location=address,
                hint="check volatile_db.user_name and password",
            ) from None
        except _failures() as exc:
            raise ServiceUnavailableError(
                f"cannot reach the Redis Cluster: {exc}",
                location=address,
                hint="start the cluster, or check volatile_db.address",
            ) from None
        self._touches: queue.Queue = queue.Queue(maxsize=_TOUCH_QUEUE)
        self._toucher: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def mark_down(self, error: BaseException) -> None:
        with self._state_lock:
            if self.available():
                log.warning(
                    "Redis Cluster failed (%s); falling through to the next tier for %.1f s",
                    error,
                    self.retry_interval_s,
                )
            self._down_until = time.monotonic() + self.retry_interval_s

    def execute(self, commands: list[tuple], *, raise_on_error: bool = False) -> list:
        """Run ``(method, *args)`` commands in one pipeline; returns their results in order.

        Without ``raise_on_error`` a failed command's result is its exception: when the pipeline
        fails as a whole (redis-py raises on a dead node), the commands are re-sent grouped by
        node, so only the keys of unreachable nodes fail.
        """
        if not commands:
            return []
        with self._gate:
            try:
                pipe = self.client.pipeline(transaction=False)
                for method, *args in commands:
                    getattr(pipe, method)(*args)
                return pipe.execute(raise_on_error=raise_on_error)
            except _failures() as exc:
                if raise_on_error:
                    raise
                return self._execute_per_node(commands, exc)

    def _execute_per_node(self, commands: list[tuple], first_error: BaseException) -> list:
        results: list = [first_error] * len(commands)
        by_node: dict = {}
        for i, (_, name, *_args) in enumerate(commands):
            try:
                node = self.client.get_node_from_key(name)
            except _failures():
                continue
            by_node.setdefault(node.name, (node, []))[1].append(i)
        for node, indices in by_node.values():
            try:
                pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
                for i in indices:
                    method, *args = commands[i]
                    getattr(pipe, method)(*args)
                for i, result in zip(indices, pipe.execute(raise_on_error=False)):
                    results[i] = result
            except _failures() as exc:
                for i in indices:
                    results[i] = exc
        return results

    def touch_later(self, commands: list[tuple]) -> None:
        """Queue a metadata update (dropped when the queue is full: it only steers eviction)."""
        if self._closed:
            return
        if self._toucher is None:
            with self._state_lock:
                if self._toucher is None:
                    self._toucher = threading.Thread(
                        target=self._touch_loop, daemon=True, name="hps-redis-touch"
                    )
                    self._toucher.start()
        try:
            self._touches.put_nowait(commands)
        except queue.Full:
            pass

    def _touch_loop(self) -> None:
        free_this_thread()  # started by a lookup, maybe on hps serve's pinned event loop
        while True:
            commands = self._touches.get()
            try:
                if commands is None:
                    return
                self.execute(commands)
            except Exception:  # noqa: BLE001 - metadata is best effort
                pass
            finally:
                self._touches.task_done()

    def drain(self) -> None:
        """Wait until the queued metadata updates are applied (tests, orderly shutdown)."""
        if self._toucher is not None:
            self._touches.join()

    def table(
        self,
        tag: str,
        dim: int,
        *,
        num_partitions: int,
        key_width: int = 64,
        overflow_margin: int | None = None,
        overflow_policy: str = "evict_random",
        overflow_resolution_target: float = 0.8,
        seed: int = 0,
    ) -> "RedisTable":
        return RedisTable(
            self,
            tag,
            dim,
            num_partitions=num_partitions,
            key_width=key_width,
            overflow_margin=overflow_margin,
            overflow_policy=overflow_policy,
            overflow_resolution_target=overflow_resolution_target,
            seed=seed,
        )

    def close(self) -> None:
        self._closed = True
        if self._toucher is not None:
            self._touches.put(None)
            self._toucher.join(timeout=5)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


class RedisTable:
    """One table in the cluster: get (with failure reporting), insert with eviction, remove."""

    def __init__(
        self,
        store: RedisClusterStore,
        tag: str,
        dim: int,
        *,
        num_partitions: int,
        key_width: int = 64,
        overflow_margin: int | None = None,
        overflow_policy: str = "evict_random",
        overflow_resolution_target: float = 0.8,
        seed: int = 0,
    ):
        if overflow_policy not in POLICIES:
            raise ConfigError(
                f"unknown overflow_policy '{overflow_policy}'",
                location="volatile_db.overflow_policy",
            )
        self.store = store
        self.tag = tag
        self.dim = int(dim)
        self.num_partitions = int(num_partitions)
        self.key_width = key_width
        self.overflow_margin = (
            overflow_margin if overflow_margin is not None and overflow_margin < 2**63 else None
        )
        self.overflow_policy = overflow_policy
        self._resolve_to = (
            None
            if self.overflow_margin is None
            else int(round(self.overflow_margin * overflow_resolution_target))
        )
        self._names = [redis_hash_names(tag, p) for p in range(self.num_partitions)]
        self._rng = np.random.default_rng(seed)
        self.evictions = 0

    # ------------------------------------------------------------------ helpers

    def _key_bytes(self, keys: np.ndarray) -> tuple[bytes, ...]:
        return key_bytes(keys, self.key_width)

    def _groups(self, keys: np.ndarray):
        """(partition, positions in ``keys``) for each partition present, chunked by batch size."""
        part = partition_of(keys, self.num_partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.num_partitions + 1))
        step = self.store.max_batch_size
        for p in range(self.num_partitions):
            mine = order[bounds[p] : bounds[p + 1]]
            for first in range(0, mine.size, step):
                yield p, mine[first : first + step]

    def _meta_value(self) -> bytes:
        if self.overflow_policy == "evict_oldest":
            return struct.pack("<q", int(time.time()))
        return b"0"

    @property
    def record_key(self) -> str:
        return RECORD_FORMAT.format(tag=self.tag)

    # ------------------------------------------------------------------ lookups

    def get(
        self, keys: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors of ``keys``: ``(out, hit, failed)``; ``failed`` marks keys whose command
        failed (not misses: the caller should count them as tier failures). Never raises on
        a cluster failure."""
        n = keys.size
        if out is None:
            out = np.zeros((n, self.dim), dtype=np.float32)
        hit = np.zeros(n, dtype=bool)
        failed = np.zeros(n, dtype=bool)
        if not n:
            return out, hit, failed
        if not self.store.available():
            failed[:] = True
            return out, hit, failed
        kb = self._key_bytes(keys)
        groups = list(self._groups(keys))

        results = self.store.execute(
            [("hmget", self._names[p][0], [kb[i] for i in pos]) for p, pos in groups]
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            self.store.mark_down(errors[0])
        touched: list[tuple[int, list[bytes]]] = []
        vsize = 4 * self.dim
        for (p, pos), values in zip(groups, results):
            if isinstance(values, BaseException):
                failed[pos] = True
                continue
            found = [i for i, v in enumerate(values) if v is not None and len(v) == vsize]
            if not found:
                continue
            where = pos[found]
            out[where] = np.frombuffer(b"".join([values[i] for i in found]), dtype="<f4").reshape(
                len(found), self.dim
            )
            hit[where] = True
            if self.overflow_policy != "evict_random":
                touched.append((p, [kb[i] for i in where]))
        if touched:
            self.store.touch_later(self._touch_job(touched))
        return out, hit, failed

    def _touch_job(self, touched: list[tuple[int, list[bytes]]]):
        lfu = self.overflow_policy == "evict_least_used"
        stamp = struct.pack("<q", int(time.time()))

        commands: list[tuple] = []
        for p, fields in touched:
            name = self._names[p][1]
            if lfu:
                commands.extend(("hincrby", name, f, 1) for f in fields)
            else:
                commands.append(("hset", name, None, None, dict.fromkeys(fields, stamp)))
        return commands

    # ------------------------------------------------------------------ updates

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Upsert; returns the keys evicted by overflow handling. Raises ServiceUnavailableError
        when the cluster fails (the caller cannot know which writes landed)."""
        if not keys.size:
            return np.empty(0, dtype=np.int64)
        keys, vectors = dedupe_last(
            np.asarray(keys, dtype=np.int64), np.ascontiguousarray(vectors, dtype="<f4")
        )
        kb = self._key_bytes(keys)
        raw = vectors.tobytes()
        vsize = 4 * self.dim
        meta = self._meta_value()
        groups = list(self._groups(keys))

        commands: list[tuple] = []
        for p, pos in groups:
            v, t = self._names[p]
            commands.append(
                ("hset", v, None, None, {kb[i]: raw[i * vsize : (i + 1) * vsize] for i in pos})
            )
            commands.append(("hset", t, None, None, dict.fromkeys([kb[i] for i in pos], meta)))
            commands.append(("hlen", v))
        results = self._run(commands)
        if self.overflow_margin is None:
            return np.empty(0, dtype=np.int64)
        sizes: dict[int, int] = {}
        added: dict[int, int] = {}
        batch: dict[int, int] = {}
        for (p, pos), new, size in zip(groups, results[0::3], results[2::3]):
            sizes[p] = int(size)  # the last chunk of a partition reports its final size
            added[p] = added.get(p, 0) + int(new)  # HSET counts the fields it created
            batch[p] = batch.get(p, 0) + len(pos)  # keys are unique (dedupe_last)
        margin = self.overflow_margin
        evicted = []
        for p, size in sizes.items():
            if size > margin:  # as the hash map: old entries shrink to the target, then the new
                new = min(added[p], margin)
                # ... but not below the batch's keys that were already held (just updated)
                held = batch[p] - added[p]
                keep = min(max(self._resolve_to, held), margin - new) + new
                evicted.append(self._evict(p, size - keep, set(kb)))
        evicted = [e for e in evicted if e.size]
        return np.concatenate(evicted) if evicted else np.empty(0, dtype=np.int64)

    def _evict(self, p: int, count: int, protected: set[bytes]) -> np.ndarray:
        v, t = self._names[p]
        if self.overflow_policy == "evict_random":
            fields = self._run([("hkeys", v)])[0]
            score = self._rng.random(len(fields))
        else:
            fields, meta = self._run([("hkeys", v), ("hgetall", t)])
            lfu = self.overflow_policy == "evict_least_used"
            score = np.array([_meta_score(meta.get(f), lfu) for f in fields], dtype=np.float64)
        if protected:
            score[[i for i, f in enumerate(fields) if f in protected]] += np.inf
        count = min(count, len(fields))
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        victims = [fields[i] for i in np.argpartition(score, count - 1)[:count]]

        commands: list[tuple] = []
        for first in range(0, len(victims), self.store.max_batch_size):
            chunk = victims[first : first + self.store.max_batch_size]
            commands += [("hdel", v, *chunk), ("hdel", t, *chunk)]
        self._run(commands)
        self.evictions += len(victims)
        dtype = "<i8" if self.key_width == 64 else "<u4"
        return np.frombuffer(b"".join(victims), dtype=dtype).astype(np.int64)

    def remove(self, keys: np.ndarray) -> int:
        """Delete keys; returns how many were present. Raises ServiceUnavailableError."""
        if not keys.size:
            return 0
        keys = np.unique(np.asarray(keys, dtype=np.int64))
        kb = self._key_bytes(keys)
        groups = list(self._groups(keys))

        commands: list[tuple] = []
        for p, pos in groups:
            fields = [kb[i] for i in pos]
            commands += [("hdel", self._names[p][0], *fields), ("hdel", self._names[p][1], *fields)]
        results = self._run(commands)
        return int(sum(results[0::2]))

    def clear(self) -> None:
        """Delete every hash of this table and its record."""
        self._run(
            [("delete", name) for pair in self._names for name in pair]
            + [("delete", self.record_key)]
        )

    def size(self) -> int:
        return int(self.partition_sizes().sum())

    def partition_sizes(self) -> np.ndarray:
        return np.array(self._run([("hlen", v) for v, _ in self._names]), dtype=np.int64)

    def read_record(self) -> dict | None:
        raw = self._run([("get", self.record_key)])[0]
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def write_record(self, record: dict) -> None:
        self._run([("set", self.record_key, json.dumps(record, sort_keys=True))])

    def _run(self, commands: list[tuple]) -> list:
        try:
            return self.store.execute(commands, raise_on_error=True)
        except _failures() as exc:
            self.store.mark_down(exc)
            raise ServiceUnavailableError(
                f"Redis Cluster failed: {exc}",
                location=self.store.address,
                hint="the volatile tier may hold stale values of these keys until it is reloaded",
            ) from None


def _meta_score(raw: bytes | None, lfu: bool) -> float:
    if raw is None:
        return -1.0
    if lfu:
        try:
            return float(int(raw))
        except ValueError:
            return -1.0
    if len(raw) == 8:
        return float(struct.unpack("<q", raw)[0])
    return -1.0
