"""Amazon Kinesis Data Streams connector: response decoding and KPL deaggregation."""
