#!/usr/bin/env python3
"""Every metric the alert rules and the dashboard use must exist.

Starts the built binary (default target/debug/poolgate) on the sample config
(config/poolgate.toml) with --demo-upstream on free loopback ports, and with a
Redis store configured at an address nothing listens on (so the store's series
are exported too; the fallback answers), scrapes /metrics on the admin port
once the gateway is ready, and fails if a poolgate_* or process_* name used in
deploy/prometheus/*.yaml or deploy/grafana/*.json is not exported. A histogram
used as name_bucket, name_sum or name_count counts as exported when name is.

Usage: check-metric-names.py [--binary PATH] [--config PATH]
Standard library only.
"""
import argparse
import glob
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = re.compile(r"\b((?:poolgate|process)_[a-zA-Z0-9_]*[a-zA-Z0-9])\b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


def used_names() -> dict:
    used = {}
    files = sorted(glob.glob(str(ROOT / "deploy/prometheus/*.yaml"))) + sorted(
        glob.glob(str(ROOT / "deploy/grafana/*.json"))
    )
    for f in files:
        for n in NAME.findall(pathlib.Path(f).read_text()):
            used.setdefault(n, set()).add(os.path.relpath(f, ROOT))
    return used


def exported_names(text: str) -> set:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            names.add(parts[2])
            if parts[3] in ("histogram", "summary"):
                names.update(parts[2] + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/debug/poolgate"))
    ap.add_argument("--config", default=str(ROOT / "config/poolgate.toml"))
    args = ap.parse_args()
    used = used_names()
    if not used:
        print("no metric names found in deploy/: wrong directory?", file=sys.stderr)
        return 1
    listen, admin, upstream, redis = (free_port() for _ in range(4))
    env = dict(
        os.environ,
        POOLGATE_LISTEN=f"127.0.0.1:{listen}",
        POOLGATE_ADMIN_LISTEN=f"127.0.0.1:{admin}",
        POOLGATE_UPSTREAM_URL=f"http://127.0.0.1:{upstream}",
        POOLGATE_REDIS_URL=f"redis://127.0.0.1:{redis}/0",
        RUST_LOG="error",
    )
    env.pop("POOLGATE_ADMIN_TOKEN", None)
    proc = subprocess.Popen(
        [args.binary, "--config", args.config, "--demo-upstream"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{admin}"
        deadline = time.monotonic() + 30
        while get(base + "/readyz")[0] != 200:
            if proc.poll() is not None:
                print(f"poolgate exited ({proc.returncode}):\n{proc.stderr.read().decode()}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print("poolgate not ready within 30s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        status, text = get(base + "/metrics")
        if status != 200:
            print(f"/metrics answered {status}", file=sys.stderr)
            return 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    exported = exported_names(text)
    missing = {n: f for n, f in used.items() if n not in exported}
    for n in sorted(used):
        print(("MISSING " if n in missing else "ok      ") + n + "  (" + ", ".join(sorted(used[n])) + ")")
    if missing:
        print(f"{len(missing)} metric name(s) used in deploy/ are not exported", file=sys.stderr)
        return 1
    print(f"{len(used)} metric names used in deploy/, all exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
