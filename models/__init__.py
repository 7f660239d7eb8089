"""Merlin Models training: retrieval (two-tower, matrix factorisation, popularity fallback) and
ranking (light and heavy multi-task DCN, each also learning from what the stage before returns:
`cascade`), the weighted blend of the rankers' objectives, and the funnel in one process.

TensorFlow is imported only by the modules that train or load a TensorFlow model
(`retrieval`, `ranking`, and `candidates.load_retrieval`); `blend`, `artifacts`, `features`
(the served tables and their request-time recency) and `peers` (EASE, item-kNN) need no
TensorFlow, so serving and evaluation can use them without it.
"""
