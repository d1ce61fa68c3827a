"""``check`` names the keys that open ``/api/leads`` (never their values), read from a fake Azure
Resource Manager on loopback that answers the two listkeys operations as documented."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from leads.core.settings import Settings
from leads.ops.function_keys import API_VERSION, ARM_SCOPE, function_keys_check

APP = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-leads"
    "/providers/Microsoft.Web/sites/func-leads"
)
TOKEN = "arm-token-for-tests"


class FakeArm:
    """POST {app}/functions/{name}/listkeys and {app}/host/default/listkeys, with a bearer token."""

    def __init__(self, function_keys: dict[str, str], host_keys: dict[str, str], status: int = 200) -> None:
        self.function_keys, self.host_keys, self.status = function_keys, host_keys, status
        self.calls: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                fake.calls.append(url.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, {"error": {"code": "InvalidAuthenticationToken"}})
                if parse_qs(url.query).get("api-version") != [API_VERSION]:
                    return self._answer(400, {"error": {"code": "InvalidApiVersionParameter"}})
                if fake.status != 200:
                    return self._answer(fake.status, {"error": {"code": "AuthorizationFailed"}})
                if url.path == f"{APP}/functions/ingest_lead/listkeys":
                    return self._answer(
                        200, {"id": f"{APP}/functions/ingest_lead/keys", "name": None, "properties": fake.function_keys}
                    )
                if url.path == f"{APP}/host/default/listkeys":
                    return self._answer(
                        200, {"masterKey": "master-value", "functionKeys": fake.host_keys, "systemKeys": {}}
                    )
                self._answer(404, {"error": {"code": "ResourceNotFound"}})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeArm:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class SignedIn:
    """An Azure credential as azure-identity's are used: get_token(scope) -> AccessToken."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes += scopes
        return AccessToken(TOKEN, 2**31)


class SignedOut:
    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        raise ClientAuthenticationError("no az login")


def settings(app_id: str = APP) -> Settings:
    return Settings(LEADS_FUNCTION_APP_ID=app_id, LEADS_HTTP_TIMEOUT_SECONDS="5")


def test_check_names_the_keys_and_never_their_values():
    credential = SignedIn()
    with FakeArm({"default": "value-one", "partner-center-2026": "value-two"}, {"default": "host-value"}) as arm:
        check = function_keys_check(settings(), credential, arm.url)
    assert check.ok
    assert check.message == "ingest_lead keys: default, partner-center-2026; app-wide function keys: default"
    assert "value" not in check.message and credential.scopes == [ARM_SCOPE]


def test_no_key_at_all_is_a_failure_with_the_command_to_make_one():
    with FakeArm({}, {}) as arm:
        check = function_keys_check(settings(), SignedIn(), arm.url)
    assert not check.ok and "cannot deliver" in check.message and "keys set" in check.fix


@pytest.mark.parametrize(
    "credential, status, message, fix",
    [
        (SignedOut(), 200, "no Azure sign-in", "az login"),
        (SignedIn(), 403, "403 AuthorizationFailed", "listkeys/action"),
    ],
)
def test_what_stops_the_listing_is_named(credential, status, message, fix):
    with FakeArm({"default": "v"}, {}, status=status) as arm:
        check = function_keys_check(settings(), credential, arm.url)
    assert not check.ok and message in check.message and fix in check.fix


def test_without_the_app_id_check_says_it_cannot_tell():
    check = function_keys_check(settings(""), SignedIn(), "http://127.0.0.1:9")
    assert check.ok and "not listed" in check.message and "az functionapp show" in check.fix
    wrong = function_keys_check(settings("func-leads"), SignedIn(), "http://127.0.0.1:9")
    assert not wrong.ok and "resource id" in wrong.message
