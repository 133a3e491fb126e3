"""Sources: what feeds the bus.

* :mod:`pipeline.sources.webhook_server` — the Instantly webhook receiver (aiohttp): checks each
  delivery (path, content type, size, IP allowlist, secret header), normalizes it to Event v1
  (:mod:`pipeline.sources.webhook_normalize`) and answers 200 only once the bus committed it.
* :mod:`pipeline.sources.webhook_config` — the ``webhook:`` config section, validated into frozen models.

The Instantly pollers live in :mod:`connectors.instantly` and are registered by entry point.
"""
