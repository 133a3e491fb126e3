"""The workspace half of ``instantly-audit check``: a fresh snapshot, the stream's rules, and one-shot checks.

For each configured workspace, with its own (read-only) key:

1. read ``GET /workspaces/current`` and list API keys, members, webhooks, the block list and the
   sending accounts
   (plus agency links when that stream is configured), then the audit log of the last
   ``shared_key_window_days`` (who used which key) — :mod:`.snapshot`;
2. turn the listings into the poller's baseline events (:func:`~connectors.instantly.snapshots.diff_snapshots`
   with no previous snapshot) and run them through the same :class:`~pipeline.rules.RulesEngine`
   and ``rules`` config the stream uses; every open alert is a failed check. The check runs the
   block-list rule without its settle delay (the whole snapshot is there at once), and
   ``--rotation-days`` overrides ``api_key.stale.key_max_age_days`` — :mod:`.baseline`, :mod:`.settings`;
3. add what only a one-shot check can judge (:data:`.catalog.OWN_CHECKS`): the pipeline's own key
   holding more than the read scopes it needs and keys shared by several integrations
   (:mod:`.keys`), owner/admin members outside ``allowed_admins`` and pending invitations older
   than ``invitation_max_age_days`` (:mod:`.members`), and protected domains missing from an
   *empty* block list (the stream sees no block-list event then; :mod:`.baseline`).

:mod:`.run` runs it all per workspace; :mod:`.cross_reference` marks committed keys (found by the
repository scan) that are live. Key values are used only to recognise the pipeline's own key
(exact value, or the masked form's first and last four characters) and are dropped right after;
results carry fingerprints.

The package exports only :class:`PostureSettings` (the ``check`` config section's entry point);
import the rest from its modules.
"""

from __future__ import annotations

from connectors.instantly.posture.settings import PostureSettings

__all__ = ["PostureSettings"]
