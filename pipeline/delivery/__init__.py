"""Delivery: the sink runner (consumer group per sink, batching, retry, circuit, dead letters) and sinks."""
