"""A host's managed identity endpoint on loopback (App Service's and Functions': ``IDENTITY_ENDPOINT``
with the ``X-IDENTITY-HEADER`` secret, ``api-version=2019-08-01``), handing out storage tokens
that Azurite's ``--oauth basic`` accepts, and taking ``latency`` seconds over each.

Azurite checks a bearer token's shape, not its signature: a JWT whose audience is storage's,
whose issuer is an Entra ID one, and which is valid now (``node_modules/azurite``'s
``TableTokenAuthenticator``). ``token_lifetime`` under 300 s makes every storage call ask for a
new token (azure-core and MSAL both refresh a token with less than five minutes left), so a slow
endpoint is felt on every call: the worst case.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackHandler, LoopbackServer

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _part(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def storage_token(lifetime: int) -> str:
    now = int(time.time())
    claims = {
        "aud": "https://storage.azure.com",
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime,
        "oid": str(uuid.uuid4()),
        "tid": TENANT,
    }
    return f"{_part({'alg': 'RS256', 'typ': 'JWT'})}.{_part(claims)}.c2lnbmF0dXJl"


class _Handler(LoopbackHandler):
    methods = ("GET",)

    def serve(self, method: str) -> None:
        fake: FakeIdentity = self.fake
        with fake.lock:
            fake.requests += 1
        time.sleep(fake.latency)
        query = parse_qs(urlsplit(self.path).query)
        if self.headers.get("X-IDENTITY-HEADER") != fake.secret:
            return self.answer(401, {"error": "missing or wrong X-IDENTITY-HEADER"})
        resource = (query.get("resource") or [""])[0]
        self.answer(
            200,
            {
                "access_token": storage_token(fake.token_lifetime),
                "resource": resource,
                "expires_on": str(int(time.time()) + fake.token_lifetime),
                "token_type": "Bearer",
                "client_id": (query.get("client_id") or [str(uuid.uuid4())])[0],
            },
        )


class FakeIdentity(LoopbackServer):
    name = "fake-identity"
    handler = _Handler

    def __init__(self, latency: float = 0.0, token_lifetime: int = 3600) -> None:
        super().__init__()
        self.latency, self.token_lifetime = latency, token_lifetime
        self.secret = uuid.uuid4().hex
        self.requests = 0

    def host_environment(self) -> dict[str, str]:
        """What App Service and Functions put in the app's environment for its identity endpoint."""
        return {"IDENTITY_ENDPOINT": f"{self.base_url}/msi/token", "IDENTITY_HEADER": self.secret}
