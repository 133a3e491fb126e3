"""The generic webhook receiver, one module per job.

* :mod:`.config` — the ``webhook:`` section; :mod:`.kind` — what a connector's webhook kind provides;
* :mod:`.connections` — the connection guard in front of aiohttp (cap, header deadline);
* :mod:`.admission` — client address, IP allowlist, secret header, fixed refusal answers;
* :mod:`.dedup` — the duplicate-delivery window; :mod:`.group_commit` — batched bus transactions;
* :mod:`.access_log` — query strings out of aiohttp's access log;
* :mod:`.listener` — binding with the guard, aiohttp limits and TLS; :mod:`.readiness` — ``/readyz``;
* :mod:`.receiver` — :class:`~.receiver.WebhookReceiver`, the HTTP server tying them together.
"""
