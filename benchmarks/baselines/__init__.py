"""Baselines for ``streamkit bench``: the same work, done the ways users would otherwise do it.

Each baseline gets the same records as streamkit in the same run and does the same work per record
(:mod:`.work`), and returns :class:`streamkit.bench.measure.Figures` so the report can print it beside
streamkit's figures as a ratio.

- :mod:`.boto3_loop`: a plain boto3 GetRecords loop. On the synthetic source, the recorded bodies go through
  botocore's parser (what boto3 does with every response); on the local stack, a real boto3 client.
- :mod:`.powertools`: AWS Lambda Powertools' ``BatchProcessor`` fed the records as Lambda Kinesis events.
- :mod:`.async_kinesis`: the async-kinesis consumer on the local stack, as shipped.

They live outside the installed package because they need the ``dev`` extra (boto3, Powertools,
async-kinesis); ``streamkit bench`` finds them in a streamkit checkout and reports them as skipped otherwise.
"""

from __future__ import annotations

from .registry import Baseline, local_baselines, synthetic_baselines

__all__ = ["Baseline", "local_baselines", "synthetic_baselines"]
