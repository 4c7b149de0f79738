"""Everything that finds, loads or runs a model: offline resolution, loading (with the
GGUF conversion cached), device selection, the shared embedder, the self-information
scorer, and the engine's linear layers: split over the CPU cores, multiplying by
the GGUF file's own blocks with ctxproto's kernels, int8 or bfloat16.

The runtime and the stages both build on this layer; it imports neither.
"""
