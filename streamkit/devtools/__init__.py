"""Developer tools, kept apart from the core: ``bench`` (shard throughput beside the baselines), ``localstack``
(the local stand-ins for AWS and Kafka, started on loopback and stopped by PID) and ``demo``.

Nothing under :mod:`streamkit` outside this package imports it, except the CLI commands that run these tools;
the core modules show what a record goes through.
"""
