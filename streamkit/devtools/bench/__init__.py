"""``streamkit bench``: shard throughput of a pipeline, side by side with the alternatives.

``runner`` drives a benchmark, ``pipelines`` runs streamkit on a chosen source, ``data`` records GetRecords
bodies, ``measure`` and ``report`` hold the figures. See docs/performance.md for the method and the figures.
Nothing here imports an AWS SDK at import time (the local stack and the real-stream reader import the
connectors when they run), and importing this package or ``args`` is cheap: the CLI builds every parser.
"""
