"""The GPU embedding cache (PyCUDA kernels in cuda/) and its NumPy reference.

The reference implements every kernel with the same semantics on the CPU: it is the fallback
when there is no GPU or no PyCUDA, and the oracle of the GPU tests. Importing this package
imports neither PyCUDA nor anything heavy.
"""
