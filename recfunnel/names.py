"""Names the whole funnel shares, defined once: the logged signals and the training labels.

A leaf module: every layer may import it (the data sources, the NVTabular workflows, the
models' objectives, the truth audits, the config's checks), and it imports nothing of the project.
"""

# what a logged event says the user did (events columns, 0/1)
SIGNALS = ("click", "like", "share")
# the naive watch label: watched at least `dataset.watch_threshold` of the item
NAIVE_WATCH = "watch_75"
# watch time above a quantile of clicked events on items of similar length (L2)
DURATION_AWARE_WATCH = "watch_duration_aware"
# every training label (the rankers' objectives are a subset of these)
LABELS = (*SIGNALS, NAIVE_WATCH, DURATION_AWARE_WATCH)
# what an online experiment counts per user (the simulator's outcomes; any is a primary metric)
OUTCOMES = ("sessions", "impressions", "clicks", "likes", "shares", "watch_seconds")
