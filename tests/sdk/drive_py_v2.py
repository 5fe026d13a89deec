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
import json
import os
import sys
import traceback

from authing.v2.authentication.authing import AuthenticationClient
from authing.v2.authentication.types import AuthenticationClientOptions
from authing.v2.exceptions import AuthingException

SDK = "py-v2"


def emit(row, ok, code, message, raw):
    print(json.dumps({"row": row, "sdk": SDK, "ok": ok, "code": code, "message": message,
                      "raw": raw}, ensure_ascii=False, default=str), flush=True)


def main():
    base = sys.argv[1].rstrip("/")
    calls = json.load(sys.stdin)
    clients = {}
    for c in calls:
        row = c.get("row")
        try:
            opts = {"app_id": "sdk-app", "user_pool_id": "sdk-pool", "app_host": base,
                    "websocket_host": base, "enc_public_key": os.environ.get("SDK_PUBKEY")}
            opts.update(c.get("client") or {})
            key = json.dumps(opts, sort_keys=True)
            if key not in clients:
                clients[key] = AuthenticationClient(AuthenticationClientOptions(**opts))
            target = clients[key]
            for part in c["call"].split("."):
                target = getattr(target, part)
            out = target(*(c.get("args") or []), **(c.get("kwargs") or {}))
            code = out.get("code", 200) if isinstance(out, dict) else 200
            ok = code == 200
            msg = out.get("message") if isinstance(out, dict) else None
            emit(row, ok, code, msg, out)
        except AuthingException as e:
            emit(row, False, e.code, e.message, None)
        except Exception as e:
            emit(row, False, None, "%s: %s" % (type(e).__name__, e), traceback.format_exc(limit=3))


if __name__ == "__main__":
    main()
