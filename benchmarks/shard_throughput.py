"""Shard throughput: ``streamkit bench`` from the benchmarks folder, same options.

    .venv/bin/python benchmarks/shard_throughput.py [--source synthetic|local|stream] [--records N] ...

streamkit reads recorded GetRecords bodies (or the local stack, or a real stream) through the production
Kinesis reader and a representative pipeline; a plain boto3 GetRecords loop, Powertools' BatchProcessor
and async-kinesis (local stack) do the same work on the same records in the same run, and the table shows
streamkit's records/s as a multiple of each. Method and figures: docs/performance.md.
"""

from __future__ import annotations

import sys

from streamkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
