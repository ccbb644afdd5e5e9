"""A processor whose import takes two seconds, for a stop signal that lands while the pipeline is being built
(test_cli.py). Importing it first touches the file named by STREAMKIT_TEST_BUILD_MARKER."""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamkit.batch import RecordBatch
from streamkit.processor import ProcessContext, batch_processor

Path(os.environ["STREAMKIT_TEST_BUILD_MARKER"]).touch()
time.sleep(2.0)


@batch_processor
def process(batch: RecordBatch, ctx: ProcessContext) -> RecordBatch:
    return batch
