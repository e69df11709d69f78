"""The volatile tiers: the in-process hash map and the Redis Cluster (HPS's layouts)."""
