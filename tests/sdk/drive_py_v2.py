#!/usr/bin/env python3
"""Drives the REAL authing 4.5.18 v2 Python SDK (run with tests/sdk/.venv-v2).

    drive_py_v2.py BASE_URL < scenario.json

The scenario is a JSON list of calls, run in order:
    {"row": "login.email.right", "call": "login_by_email",
     "args": ["alice@example.com", "right-password"], "kwargs": {},
     "client": {...extra AuthenticationClientOptions...}}
`call` is a method of authing.v2.authentication.authing.AuthenticationClient
(a dotted path reaches an attribute of the client). Calls with the same
`client` options share one client (so a login's token serves a later
update_password). Env SDK_PUBKEY: the RSA public key the SDK encrypts
passwords with (enc_public_key).

Prints one JSON line per call:
    {"row", "sdk": "py-v2", "ok", "code", "message", "raw"}
`code` is what the SDK surfaced: AuthingException.code when it raised, else
the returned dict's `code` (REST helpers return the body), else 200. A failed
call never stops the run.
"""
import os

from authing.v2.authentication.authing import AuthenticationClient
from authing.v2.authentication.types import AuthenticationClientOptions
from authing.v2.exceptions import AuthingException

from drive_py_common import run


def options(base):
    return {"app_id": "sdk-app", "user_pool_id": "sdk-pool", "app_host": base,
            "websocket_host": base, "enc_public_key": os.environ.get("SDK_PUBKEY")}


def judge(out):
    # REST helpers return the body (its `code`); the others a user or a value.
    code = out.get("code", 200) if isinstance(out, dict) else 200
    return code == 200, code, out.get("message") if isinstance(out, dict) else None


if __name__ == "__main__":
    run("py-v2", options, lambda opts: AuthenticationClient(AuthenticationClientOptions(**opts)),
        judge, AuthingException)
