"""The local Redis Cluster of the tests (it lives in hps_cli.devtools for examples too)."""

from hps_cli.devtools.redis_cluster import LocalRedisCluster, free_cluster_ports  # noqa: F401
