"""Baselines for ``streamkit bench``: the same work, done the ways users would otherwise do it.

Each baseline gets the same records as streamkit in the same run and does the same work per record
(:mod:`.work`), and returns :class:`streamkit.devtools.bench.measure.Figures` so the report can print it beside
streamkit's figures as a ratio.

- :mod:`.boto3_loop`: a plain boto3 GetRecords loop. On the synthetic source, the recorded bodies go through
  botocore's parser (what boto3 does with every response); on the local stack, a real boto3 client.
- :mod:`.powertools`: AWS Lambda Powertools' ``BatchProcessor`` fed the records as Lambda Kinesis events.
- :mod:`.async_kinesis`: the async-kinesis consumer on the local stack, as shipped.

They ship in the package so that ``streamkit bench`` compares side by side wherever it is installed (an ECS
task reading the user's own stream). The libraries they drive (boto3, Powertools, async-kinesis) come with the
``bench`` extra and are imported only when a baseline runs; without them ``streamkit bench`` reports that
baseline as skipped and names the extra.
"""

from __future__ import annotations

from .registry import Baseline, local_baselines, synthetic_baselines

__all__ = ["Baseline", "local_baselines", "synthetic_baselines"]
