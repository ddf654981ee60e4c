"""Who is calling: bearer JWT verification, the caller's identity, and token issuing.

No mitmproxy here: `addons/auth.py` calls `Verifier.verify` for every request, the CLI calls it
for `sidemeter token verify`, and `issue_token` backs `sidemeter token issue` and the demo.

- `errors.py`: the refusal reasons, AuthError, KeyConfigError
- `settings.py`: AuthSettings, the auth group of the settings table
- `keys.py`: loading secrets, PEM keys, JWKs and JWKS documents, and the algorithms each allows
- `jwks.py`: the key sources a Verifier asks: one static key, or a cached, refreshed JWKS
- `verify.py`: Identity, the Verifier and its verified-token cache
- `issue.py`: SigningKey and issue_token
"""

from agent.auth.errors import REASONS, AuthError, KeyConfigError
from agent.auth.issue import SigningKey, issue_token
from agent.auth.jwks import JwksKeys, KeySource, StaticKey
from agent.auth.keys import VerificationKey, load_private_key, load_public_key, load_secret, parse_jwks
from agent.auth.settings import AuthSettings
from agent.auth.verify import CACHE_ENTRIES, CACHE_SECONDS, Identity, Verifier

__all__ = [
    "CACHE_ENTRIES",
    "CACHE_SECONDS",
    "REASONS",
    "AuthError",
    "AuthSettings",
    "Identity",
    "JwksKeys",
    "KeyConfigError",
    "KeySource",
    "SigningKey",
    "StaticKey",
    "VerificationKey",
    "Verifier",
    "issue_token",
    "load_private_key",
    "load_public_key",
    "load_secret",
    "parse_jwks",
]
