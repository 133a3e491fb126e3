"""Rules: the pure engine, its worker on the bus, the built-in catalog and YAML matching rules.

* :class:`RulesEngine` — events + state in, alerts + state changes out (no I/O, no wall clock);
* :class:`RulesWorker` — consumes ``instantly.events.v1``, writes ``instantly.alerts.v1``,
  rule state and offsets in one bus transaction;
* :func:`parse_rules_config` — validates the ``rules`` config section into a :class:`RuleSet`;
* :class:`CatalogRule` + :func:`register` — write a stateful rule in Python;
  :mod:`pipeline.rules.matcher` — the YAML rule format.
"""

from pipeline.rules.base import CatalogRule, Finding, Rule, RuleContext, RuleMeta, RuleParams, register
from pipeline.rules.config import RuleSet, parse_rules_config
from pipeline.rules.engine import Evaluation, RuleFailure, RulesEngine, decode_event
from pipeline.rules.worker import RulesWorker

__all__ = [
    "CatalogRule",
    "Evaluation",
    "Finding",
    "Rule",
    "RuleContext",
    "RuleFailure",
    "RuleMeta",
    "RuleParams",
    "RuleSet",
    "RulesEngine",
    "RulesWorker",
    "decode_event",
    "parse_rules_config",
    "register",
]
