#!/usr/bin/env python3
"""Drives the REAL authing 5.1.0 v3 Python SDK (run with tests/sdk/.venv-v3).

    drive_py_v3.py BASE_URL < scenario.json

Scenario: a JSON list of calls, run in order:
    {"row": "v3.email.wrong1", "call": "sign_in_by_email_password",
     "args": ["alice@example.com", "wrong"], "kwargs": {},
     "client": {"real_ip": "203.0.113.1"}}
`call` is a method of authing.AuthenticationClient (a dotted path reaches an
attribute, e.g. "http_client.request" for an endpoint the SDK has no method
for). Calls with the same `client` options share one client.

Prints one JSON line per call: {"row", "sdk": "py-v3", "ok", "code",
"message", "raw"}. The v3 client does not raise on an error answer: it
returns the body, so `code` is its `apiCode` when set, else its
`statusCode` (else its v2 `code`); `ok` is statusCode (or code) == 200. A failed call never stops the run.
"""
import json
import sys
import traceback

from authing import AuthenticationClient

SDK = "py-v3"


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
            opts = {"app_id": "sdk-app", "app_host": base, "app_secret": "sdk-app-secret"}
            opts.update(c.get("client") or {})
            key = json.dumps(opts, sort_keys=True)
            if key not in clients:
                clients[key] = AuthenticationClient(**opts)
            target = clients[key]
            for part in c["call"].split("."):
                target = getattr(target, part)
            out = target(*(c.get("args") or []), **(c.get("kwargs") or {}))
            if isinstance(out, dict):
                # v3 answers carry statusCode (+ apiCode); the few v2 routes
                # the client calls (/api/v2/ecConn/...) answer with `code`.
                status = out.get("statusCode", out.get("code"))
                code = out.get("apiCode") if out.get("apiCode") is not None else status
                emit(row, status == 200, code, out.get("message"), out)
            else:
                emit(row, True, 200, None, out)
        except Exception as e:
            emit(row, False, None, "%s: %s" % (type(e).__name__, e), traceback.format_exc(limit=3))


if __name__ == "__main__":
    main()
