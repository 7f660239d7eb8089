"""recfunnel: a multi-stage recommender on NVIDIA Merlin.

data sources -> `workflows/` (NVTabular) -> `models/` (Merlin Models) -> evaluation ->
`triton_repo/` (Triton) -> experiments. This package holds everything that is not Merlin or
TensorFlow code, so importing it stays fast.
"""
__version__ = "0.1.0"
