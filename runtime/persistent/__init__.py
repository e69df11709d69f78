"""The persistent tier: RocksDB in HPS's layout (one column family per table)."""
