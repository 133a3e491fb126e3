"""Rules: the pure engine, its worker on the bus, the YAML rule language and rule packs.

* :mod:`pipeline.rules.engine` — events + state in, alerts + state changes out (no I/O, no wall clock);
* :mod:`pipeline.rules.worker` — consumes ``instantly.events.v1``, writes ``instantly.alerts.v1``,
  rule state and offsets in one bus transaction;
* :mod:`pipeline.rules.config` — validates the ``rules`` config section into a ``RuleSet``;
* :mod:`pipeline.rules.base` — :class:`~pipeline.rules.base.CatalogRule` (write a stateful rule in
  Python) and :class:`~pipeline.rules.base.RulePack` (how a connector ships its rules);
* :mod:`pipeline.rules.matcher` — the YAML rule format.
"""
