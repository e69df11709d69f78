"""`hps bench`: measure lookups in process, a KServe v2 server from the client side, and the hit
rate a cache size would give.

Modules: ``keys`` (key distributions over a table's keys, trace replay), ``stats`` (percentiles,
measurement windows, the stability rule), ``lookup_bench`` (``HPS`` in process), ``gpu_floor``
(the cache query kernel against the plain gather kernel), ``serve_bench`` (tritonclient, a
concurrency sweep like perf_analyzer), ``cache_size`` (the reference cache replayed at several
sizes), ``report`` (rich tables, CSV, plots).
"""
