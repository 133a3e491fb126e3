"""Rotate one Instantly API key without downtime, resumably: ``instantly-audit keys rotate NAME``.

Steps, each recorded in a journal before the next begins::

    planned → created(new key id, fingerprint) → verified → stored → confirmed → done (old key deleted)

1. **planned** — the one live key called NAME is found with the *admin* key (never the
   pipeline's read-only key); the new scopes are its scopes, or ``--scopes`` if they only narrow them.
2. **created** — ``POST /api/v2/api-keys`` with the same name; the secret is shown once and
   lives only in memory until it is stored.
3. **verified** — a read call authenticates with the new key (401 → retried, then the new key is
   deleted and the rotation aborted; 402/403 still prove the key is live).
4. **stored** — written to the destination: a file (atomic replace, mode 0600) or a Vault KV v2
   field (check-and-set), then read back and compared by fingerprint.
5. **confirmed** — ``--confirm`` (an operator saw the consumers switch) or the grace period elapsed.
6. **done** — the new key is verified once more from the destination, then the old key is deleted.

Resuming (run the same command again) continues from the last completed step. A new key whose
secret was lost in an interruption (after *created*, before *stored*) is recovered from the
destination when it got there, otherwise deleted and created again, so a rotation never ends
with two live keys named NAME or with none, and the destination always holds a live key.
Before creating, keys named NAME that an interrupted create left behind are deleted.

The journal (JSON, mode 0600, atomically replaced, with a lock file so two runs cannot
interleave) holds ids, fingerprints and times — never a key. The poller sees the rotation as
``api_key.created`` / ``api_key.deleted`` snapshot events (and audit records 37/38), which
resolve ``api_key.stale`` and ``api_key.rotation_incomplete`` for the old key.

Modules: :mod:`.machine` (the steps, :class:`~.machine.KeyRotation`), :mod:`.lookup` (what it
reads: the key, the plan, the verify probe), :mod:`.journal` (the journal and its lock),
:mod:`.destinations` (file and Vault), :mod:`.scopes` (``--scopes`` narrowing), :mod:`.settings`
(the ``rotation`` config section). The package exports only :class:`RotationSettings` (the
section's entry point); import the rest from its modules.
"""

from __future__ import annotations

from connectors.instantly.rotation.settings import RotationSettings

__all__ = ["RotationSettings"]
