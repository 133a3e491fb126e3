"""Sources: what feeds the bus.

* :mod:`pipeline.sources.webhook` — the generic webhook receiver (aiohttp): guards connections,
  checks each delivery (path, content type, size, IP allowlist, secret header), normalizes it with
  the source's webhook kind and answers 200 only once the bus committed it; its ``config`` module
  is the ``webhook:`` config section.

The Instantly pollers live in :mod:`connectors.instantly` and are registered by entry point.
"""
