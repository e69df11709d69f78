"""Compiled helpers of the runtime: C sources shipped in this package, compiled at first use
with the system C compiler and loaded with ctypes (``loader.py``). Without a compiler the
callers keep their NumPy paths, which give the same answers; ``HPS_NATIVE=0`` turns them off.
Importing this package compiles nothing.
"""
