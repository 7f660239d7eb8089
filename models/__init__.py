"""Merlin Models training: retrieval (two-tower, matrix factorisation, popularity fallback) and
ranking (light and heavy multi-task DCN), and the weighted blend of the rankers' objectives.

TensorFlow is imported only by the modules that train or load a TensorFlow model
(`retrieval`, `ranking`); `blend`, `artifacts`, `popularity` and `candidates` are numpy-only,
so serving and evaluation can use them without TensorFlow.
"""
