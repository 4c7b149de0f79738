"""Everything that finds, loads or runs a model: offline resolution, loading (with the
GGUF conversion cached), device selection, the shared embedder, the self-information
scorer and the linear layers split over the CPU cores.

The runtime and the stages both build on this layer; it imports neither.
"""
