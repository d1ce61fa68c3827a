"""Which keys open ``POST /api/leads``: their names, never their values, for ``check``.

The marketplace sends no auth header, so the function key travels in the URL (``?code=``) that
Partner Center holds. Rotating it without losing a lead means two keys for a while (see
docs/security.md); ``check`` helps by naming the keys that exist.

Key names are read from Azure Resource Manager with the caller's identity
(``DefaultAzureCredential``: ``az login`` on an operator's machine) through the two documented
operations that list them, *Web Apps - List Function Keys* (``POST
{app}/functions/ingest_lead/listkeys``) and *Web Apps - List Host Keys* (``POST
{app}/host/default/listkeys``, whose ``functionKeys`` open every function). Both answer the key
values too: they are dropped here at once and never printed or logged. It needs
``LEADS_FUNCTION_APP_ID`` (the app's resource id); without it, ``check`` says it cannot tell. The
app's own identity is deliberately not given the right to list its keys, so inside Azure the
check says the same.
"""

from __future__ import annotations

import re
from typing import Any

from leads.core.settings import Settings
from leads.destinations import Check

ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
API_VERSION = "2023-12-01"
INTAKE_FUNCTION = "ingest_lead"
_APP_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Web/sites/[^/]+", re.I)
FIND_APP_ID = 'az functionapp show -g "$RG" -n "$APP" --query id -o tsv'


def key_names(
    app_id: str, credential: Any, arm_url: str = ARM_URL, timeout: float = 30.0, session: Any = None
) -> tuple[list[str], list[str]]:
    """(names of ``ingest_lead``'s own keys, names of the app-wide function keys)."""
    import requests

    session = session or requests.Session()
    headers = {"Authorization": f"Bearer {credential.get_token(ARM_SCOPE).token}"}

    def listed(path: str) -> dict[str, Any]:
        response = session.post(
            f"{arm_url}{app_id}{path}", params={"api-version": API_VERSION}, headers=headers, timeout=timeout
        )
        if response.status_code != 200:
            raise KeyListingError(response.status_code, _arm_error(response))
        return response.json()

    function = listed(f"/functions/{INTAKE_FUNCTION}/listkeys")
    # A StringDictionary: the keys under "properties" (the REST shape), or at the top (as az prints it).
    own = function.get("properties") if isinstance(function.get("properties"), dict) else function
    own_names = sorted(name for name in own if name not in ("id", "name", "type", "kind", "location"))
    host_names = sorted(listed("/host/default/listkeys").get("functionKeys") or {})
    return own_names, host_names


class KeyListingError(Exception):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"Azure Resource Manager answered {status} {code}".strip())
        self.status = status


def function_keys_check(settings: Settings, credential: Any = None, arm_url: str = ARM_URL) -> Check:
    """What ``check`` says of the keys that let the marketplace in."""
    from leads.ops.advice import runs_locally

    app_id = settings.function_app_id.strip().rstrip("/")
    if not app_id and runs_locally(settings):
        return Check(
            True,
            "not checked: a local run takes POST /api/leads without a key (in Azure the marketplace's "
            "URL carries one, ?code=)",
        )
    if not app_id:
        return Check(
            True,
            "key names not listed: LEADS_FUNCTION_APP_ID is not set (locally no key is checked)",
            f"to list them, set LEADS_FUNCTION_APP_ID=$({FIND_APP_ID}) and run check signed in with az login",
        )
    if not _APP_ID.fullmatch(app_id):
        return Check(
            False,
            "LEADS_FUNCTION_APP_ID is not a function app's resource id",
            f"set it to /subscriptions/.../resourceGroups/.../providers/Microsoft.Web/sites/<app>: {FIND_APP_ID}",
        )
    from azure.core.exceptions import ClientAuthenticationError

    try:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            from leads.core.storage import identity_options

            credential = DefaultAzureCredential(exclude_interactive_browser_credential=True, **identity_options())
        own, host = key_names(app_id, credential, arm_url, settings.http_timeout_seconds)
    except ClientAuthenticationError:
        return Check(False, "the function keys cannot be listed: no Azure sign-in was found", "run az login")
    except KeyListingError as error:
        fix = f"check LEADS_FUNCTION_APP_ID: {FIND_APP_ID}"
        if error.status == 403:
            fix = (
                "your account needs a role with Microsoft.Web/sites/functions/listkeys/action on the app "
                "(Website Contributor, or Contributor)"
            )
        return Check(False, f"the function keys cannot be listed: {error}", fix)
    except Exception as error:  # noqa: BLE001 - a check reports, never crashes the others
        return Check(False, f"the function keys cannot be listed ({type(error).__name__})", "run check again")
    if not own and not host:
        return Check(
            False,
            f"no key opens {INTAKE_FUNCTION}: the marketplace cannot deliver",
            "create one: az functionapp function keys set ... --function-name ingest_lead --key-name partner-center",
        )
    message = f"{INTAKE_FUNCTION} keys: {', '.join(own) or 'none'}; app-wide function keys: {', '.join(host) or 'none'}"
    return Check(True, message)


def _arm_error(response: Any) -> str:
    try:
        return str((response.json().get("error") or {}).get("code") or "")
    except ValueError:
        return ""
