"""What the Python SDK drivers (drive_py_v2.py, drive_py_v3.py) share.

Reads the scenario (a JSON list of calls) from stdin, makes one client per
distinct `client` options, calls each `call` (a dotted path from the
client), and prints one JSON line per call:
    {"row", "sdk", "ok", "code", "message", "raw"}
A failed call never stops the run.
"""
import json
import sys
import traceback


def emit(sdk, row, ok, code, message, raw):
    print(json.dumps({"row": row, "sdk": sdk, "ok": ok, "code": code, "message": message,
                      "raw": raw}, ensure_ascii=False, default=str), flush=True)


def run(sdk, options, make_client, judge, sdk_errors=()):
    """Runs the scenario against BASE_URL (argv[1]).

    options(base) gives the client options before a call's own `client`
    ones; make_client(opts) makes a client; judge(out) gives (ok, code,
    message) of a returned value; an exception of `sdk_errors` is the SDK
    reporting an error answer (its .code and .message are emitted).
    """
    base = sys.argv[1].rstrip("/")
    calls = json.load(sys.stdin)
    clients = {}
    for c in calls:
        row = c.get("row")
        try:
            opts = options(base)
            opts.update(c.get("client") or {})
            key = json.dumps(opts, sort_keys=True)
            if key not in clients:
                clients[key] = make_client(opts)
            target = clients[key]
            for part in c["call"].split("."):
                target = getattr(target, part)
            out = target(*(c.get("args") or []), **(c.get("kwargs") or {}))
            ok, code, message = judge(out)
            emit(sdk, row, ok, code, message, out)
        except sdk_errors as e:
            emit(sdk, row, False, e.code, e.message, None)
        except Exception as e:
            emit(sdk, row, False, None, "%s: %s" % (type(e).__name__, e),
                 traceback.format_exc(limit=3))
