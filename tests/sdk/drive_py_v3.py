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
from authing import AuthenticationClient

from drive_py_common import run


def options(base):
    return {"app_id": "sdk-app", "app_host": base, "app_secret": "sdk-app-secret"}


def judge(out):
    if not isinstance(out, dict):
        return True, 200, None
    # v3 answers carry statusCode (+ apiCode); the few v2 routes the client
    # calls (/api/v2/ecConn/...) answer with `code`.
    status = out.get("statusCode", out.get("code"))
    code = out.get("apiCode") if out.get("apiCode") is not None else status
    return status == 200, code, out.get("message")


if __name__ == "__main__":
    run("py-v3", options, lambda opts: AuthenticationClient(**opts), judge)
