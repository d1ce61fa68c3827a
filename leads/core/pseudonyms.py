"""Keyed digests of personal data: what the store keeps in place of a person's details.

Every digest the app makes of personal data (an HTTP or import lead's id, the rows of
``<prefix>Identities`` that name a lead's identities and email addresses, the content row of an
HTTP lead, an erased lead's tombstone) is an HMAC-SHA-256 keyed with ``LEADS_ID_KEY``. A plain
SHA-256 of an address, or of what a person submitted, can be recomputed by anyone who guesses
the details and so confirms that the person's lead came in; without the key, a keyed digest
cannot. The key lives in Key Vault in Azure (``infra/app/keyvault.bicep`` creates it once) and
in ``local.settings.json`` locally (``make run`` generates it); it is never stored beside the data.

**Without a key** (unset, or a Key Vault reference the platform has not resolved yet), digests
are the plain SHA-256 of earlier versions, so that no lead is refused for a setting: the app
logs a warning once per process naming the setting, and ``python -m leads check`` reports it.

**Digests of earlier versions.** Stores written before the key hold plain digests. Ids already
given out stay valid: they are names now, never recomputed. Where the app looks a digest up (an
import matching a row, ``forget --email`` finding an address, an erasure deleting a record's rows)
it looks under both forms, :func:`forms`, so rows written before the key are found and erased
like those written after. Reading both costs CPU only where rows are matched in memory, and one
request more where a form is a partition or row key of its own.

**The key must never change**: ids and tombstones made with one key do not match under another.
:func:`key_changed` compares the key with a check value recorded in the checkpoints table (a
digest of a constant, which tells nothing of the key) the first time an operator command ran with
it, so that ``check`` says so.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from functools import lru_cache
from typing import TYPE_CHECKING

from leads.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

SETTING = "LEADS_ID_KEY"
MIN_KEY_LENGTH = 32
_UNRESOLVED = "@Microsoft.KeyVault("
_CHECK_ROW = ("keys", SETTING)  # in the checkpoints table
_CHECK_TEXT = "leads: the check value of the id key"


def key() -> bytes | None:
    """The key of this process's settings; None when there is none to use."""
    return _usable(get_settings().id_key)


@lru_cache(maxsize=4)
def _usable(value: str) -> bytes | None:
    value = value.strip()
    if value and not value.startswith(_UNRESOLVED):
        return value.encode()
    log.warning(
        "%s is %s: lead ids and the identity, email-index and tombstone rows are plain SHA-256 digests of "
        "personal data, which anyone can recompute from a guess of the person's details; set it (make run "
        "generates one into local.settings.json, azd up creates it in Key Vault)",
        SETTING,
        "not set" if not value else "a Key Vault reference not resolved",
    )
    return None


def digest(text: str) -> str:
    """The keyed digest of ``text`` (hex), or its plain SHA-256 when no key is set."""
    secret = key()
    if secret is None:
        return plain(text)
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def plain(text: str) -> str:
    """The unkeyed SHA-256 of ``text`` (hex), as versions before the key wrote digests."""
    return hashlib.sha256(text.encode()).hexdigest()


def forms(text: str, length: int = 64) -> list[str]:
    """The digests ``text`` may be stored under, cut to ``length``: keyed, then plain (the form of
    rows an earlier version wrote); one when there is no key."""
    keyed, unkeyed = digest(text)[:length], plain(text)[:length]
    return [keyed] if keyed == unkeyed else [keyed, unkeyed]


# --- for `check` ---------------------------------------------------------------------------------


def key_problem(settings: Settings) -> tuple[bool, str, str] | None:
    """(usable?, what is wrong, the fix) when the key is missing or weak; None when it is sound."""
    value = settings.id_key.strip()
    if value.startswith(_UNRESOLVED):
        return None  # key_vault_check reports it, with the fix
    if not value:
        return (
            True,
            f"{SETTING} is not set: lead ids and index rows are plain digests of personal data, which "
            "anyone can recompute from a guess of the person's details",
            f"set {SETTING} to at least {MIN_KEY_LENGTH} random characters (make run generates one; azd up "
            "creates it in Key Vault), before the first lead if you can",
        )
    if len(value) < MIN_KEY_LENGTH:
        return (
            True,
            f"{SETTING} is {len(value)} characters: a short key is easier to guess",
            f"only on a store with no leads yet: set at least {MIN_KEY_LENGTH} random characters (changing it "
            "later makes ids and tombstones stop matching)",
        )
    return None


def key_changed(checkpoints: TableClient) -> bool | None:
    """Whether the key differs from the one this store first ran with (recorded here the first
    time, as a check value); None when there is no key."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    secret = key()
    if secret is None:
        return None
    check = hmac.new(secret, _CHECK_TEXT.encode(), hashlib.sha256).hexdigest()[:16]
    try:
        return checkpoints.get_entity(*_CHECK_ROW)["Check"] != check
    except ResourceNotFoundError:
        try:
            checkpoints.create_entity({"PartitionKey": _CHECK_ROW[0], "RowKey": _CHECK_ROW[1], "Check": check})
        except ResourceExistsError:  # another command recorded it meanwhile
            return checkpoints.get_entity(*_CHECK_ROW)["Check"] != check
        return False
