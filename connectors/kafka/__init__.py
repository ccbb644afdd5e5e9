"""Kafka / Amazon MSK source: a confluent-kafka consumer group driven from the asyncio runtime.

- :mod:`.options`: the ``source`` section (``type: kafka``) and the librdkafka configuration built from it.
- :mod:`.auth`: MSK authentication (IAM, SASL/SCRAM, mutual TLS, plaintext for local runs).
- :mod:`.consumer`: the one thread that owns the consumer: fetching, rebalances, backpressure, commits.
- :mod:`.demux`: fetched messages into per-partition chunks of columns, without per-message Python code.
- :mod:`.feed`: the hand-over of chunks to each partition's reader on the event loop, and its accounting.
- :mod:`.source`: the :class:`~streamkit.source.Source`, one ordered reader per topic-partition.
- :mod:`.offsets`: the checkpoint store that commits acknowledged offsets to the consumer group.
- :mod:`.lag`: consumer lag per partition. :mod:`.logs`: librdkafka's errors and log lines, throttled.

confluent-kafka is an optional dependency (``pip install streamkit[kafka]``); importing this package does
not import it, building a pipeline does not connect, and the source imports it only when it starts.
"""
