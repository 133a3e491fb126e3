"""The Instantly rule pack: the built-in Python rules (an explicit tuple), the YAML rules in
``builtin.yaml``, the correlation rules in ``correlations.yaml``, the shipped test cases in ``cases/``
and the ATT&CK emulations in ``sim/scenarios/emulation/`` (see :mod:`connectors.instantly.emulation`).

Registered as the ``instantly`` entry of the ``instantly_audit.rule_packs`` group.
"""

from pathlib import Path

from connectors.instantly.event_catalog import EVENT_TYPES
from connectors.instantly.rules.accounts import AccountRemovedRule, ReplyRedirectRule, TrackingDomainChangedRule
from connectors.instantly.rules.api_keys import AllScopeKeyRule, BroadScopeKeyRule, RotationIncompleteRule, StaleKeyRule
from connectors.instantly.rules.auth import LoginNewIpRule, MfaAttackRule, MfaDisabledRule, MfaFactorChangedRule
from connectors.instantly.rules.blast_radius import UnauditedReachRule
from connectors.instantly.rules.block_list import (
    EntryRemovedRule,
    InternalDomainMissingRule,
    ProtectedDomainRemovedRule,
)
from connectors.instantly.rules.data import LeadExportRule, MassDeletionRule
from connectors.instantly.rules.members import PrivilegedMemberRule, UnexpectedMemberRule
from connectors.instantly.rules.pipeline_health import SourceSilentRule, UntrackedChangeRule
from connectors.instantly.rules.unseen import UnseenCreationRule
from connectors.instantly.rules.webhooks import (
    FailingWebhookRule,
    InsecureWebhookTargetRule,
    UnauthenticatedWebhookRule,
)
from pipeline.rules.base import RulePack

HERE = Path(__file__).resolve().parent

RULES = (
    AllScopeKeyRule,
    BroadScopeKeyRule,
    StaleKeyRule,
    UnauditedReachRule,
    RotationIncompleteRule,
    MfaAttackRule,
    MfaDisabledRule,
    MfaFactorChangedRule,
    LoginNewIpRule,
    ProtectedDomainRemovedRule,
    EntryRemovedRule,
    InternalDomainMissingRule,
    LeadExportRule,
    MassDeletionRule,
    UnexpectedMemberRule,
    PrivilegedMemberRule,
    SourceSilentRule,
    UntrackedChangeRule,
    UnseenCreationRule,
    UnauthenticatedWebhookRule,
    InsecureWebhookTargetRule,
    FailingWebhookRule,
    ReplyRedirectRule,
    AccountRemovedRule,
    TrackingDomainChangedRule,
)
"""Every built-in Python rule of the pack, in catalog order."""

PACK = RulePack(
    name="instantly",
    rules=RULES,
    yaml_files=(HERE / "builtin.yaml", HERE / "correlations.yaml"),
    cases_dir=HERE / "cases",
    lock_file=HERE / "rules.lock.json",
    emulations_dir=HERE.parent / "sim" / "scenarios" / "emulation",
    event_types=EVENT_TYPES,
)
"""The pack the runtime loads (entry point ``instantly_audit.rule_packs: instantly``)."""
