#!/usr/bin/env python3
"""Bench helper: mints the fake Entra's signing key, its JWKS and a long-lived operator token.

Usage: mint.py OUT_DIR AUTHORITY_URL [COLD_TOKENS]
Writes OUT_DIR/jwks.json and OUT_DIR/token (a v2 RS256 access token for the sample tenant's
"alice", Helpdesk Tier 2), and with COLD_TOKENS = N also OUT_DIR/tokens: N distinct valid tokens,
one per line (each its own uti and signature), for the cold-token run. The private key never leaves this process. Bench use only: the
token is valid for a day and is accepted only by a passgate whose authority is this fake.
"""
import base64
import json
import os
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# The sample tenant (src/sandbox/tenant.rs, config/dev.yaml).
TENANT = "cdd6998a-1fe9-48f6-915d-b7a5b7552116"
API_CLIENT_ID = "885b1e7c-7b41-41f0-9e73-a7816b0c3fbc"
CLI_APP = "9791d56b-8586-4c2f-8fd8-25ab3e7d7230"
ALICE_OID = "72aca123-ad72-4c7b-84b5-6d536a354d63"
HELPDESK = "f3d0263f-adae-4f31-84f1-5b45713ed0b7"
KID = "bench-key-1"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def uint(n: int) -> str:
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def main() -> None:
    out, authority = sys.argv[1], sys.argv[2].rstrip("/")
    issuer = f"{authority}/{TENANT}/v2.0"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    jwks = {
        "keys": [
            {
                "kty": "RSA",
                "use": "sig",
                "kid": KID,
                "n": uint(pub.n),
                "e": uint(pub.e),
                "issuer": issuer,
            }
        ]
    }
    now = int(time.time())
    claims = {
        "aud": API_CLIENT_ID,
        "iss": issuer,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 86400,
        "ver": "2.0",
        "tid": TENANT,
        "oid": ALICE_OID,
        "sub": "bench-alice",
        "azp": CLI_APP,
        "scp": "RecoverPasscode.Request",
        "groups": [HELPDESK],
        "preferred_username": "alice@contoso.onmicrosoft.com",
        "name": "Alice Helpdesk",
        "uti": uuid.uuid4().hex,
    }
    header = {"alg": "RS256", "typ": "JWT", "kid": KID}

    def sign(c):
        signing_input = (
            b64u(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64u(json.dumps(c, separators=(",", ":")).encode())
        )
        sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64u(sig)

    token = sign(claims)
    cold = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if cold > 0:
        fd = os.open(os.path.join(out, "tokens"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            for _ in range(cold):
                f.write(sign(dict(claims, uti=uuid.uuid4().hex)) + "\n")
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    fd = os.open(os.path.join(out, "token"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


if __name__ == "__main__":
    main()
