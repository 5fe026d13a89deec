#!/usr/bin/env python3
"""Helpers of `SOAK=1 benches/loadtest.sh`: a faulty login upstream and a
load client that accounts for every request it sends. Standard library only;
everything on 127.0.0.1.

  soak.py upstream PORT
      Answers like Authing (login: wrong password; registration and anything
      else: ok). A request carrying `x-fault` gets that fault instead:
      `reset` (RST, no answer), `close` (FIN, no answer), `hang` (answers
      after 30 s, far past poolgate's upstream.request_timeout), `garbage`
      (bytes that are not HTTP).

  soak.py client PORT SECONDS THREADS OUT.json
      Mixed traffic for SECONDS from THREADS keep-alive connections: GET
      passthrough, wrong-password logins and registrations from rotating
      client addresses (X-Forwarded-For; poolgate trusts 127.0.0.1), and about
      2% of requests with an injected upstream fault. Writes a JSON summary.

A request is "lost" when the upstream was healthy for it (no `x-fault`) and
the client got no complete HTTP answer: connection refused or reset, the
connection closed before a whole response, or nothing within 15 s. Any HTTP
answer (2xx, 4xx, 429, 5xx) is an answer. The upstream marks its own answers
with `x-soak-upstream: 1`; a fault request must never get one (it gets 502 or
504, or poolgate's own answer when a guard stopped it first): one that does is
counted in `fault_unexpected`.
"""

import http.client
import json
import random
import socket
import socketserver
import struct
import sys
import threading
import time


def upstream(port):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return
                try:
                    method, target, _ = line.decode("latin-1").split(" ", 2)
                except ValueError:
                    return
                headers = {}
                while True:
                    h = self.rfile.readline(65537)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0") or 0)
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        self.rfile.read(size + 2)
                        if size == 0:
                            break
                elif n:
                    self.rfile.read(n)
                fault = headers.get("x-fault")
                if fault == "reset":
                    self.request.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.request.close()
                    return
                if fault == "close":
                    return
                if fault == "garbage":
                    self.wfile.write(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
                    return
                if fault == "hang":
                    time.sleep(30)
                if "/login" in target:
                    body = b'{"code":2333,"message":"wrong password","data":null}'
                else:
                    body = b'{"code":200,"message":"ok","data":null}'
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-soak-upstream: 1\r\n"
                    + b"content-length: %d\r\n\r\n" % len(body)
                    + body
                )
                self.wfile.flush()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 1024

    with Server(("127.0.0.1", port), Handler) as s:
        s.serve_forever()


FAULTS = ["reset", "reset", "close", "garbage", "hang"]


def client(port, seconds, threads, out):
    deadline = time.time() + seconds
    lock = threading.Lock()
    stats = {
        "sent": 0,
        "answered": 0,
        "from_upstream": 0,
        "lost": 0,
        "lost_examples": [],
        "status": {},
        "fault_sent": 0,
        "fault_status": {},
        "fault_unexpected": 0,
        "fault_no_answer": 0,
        "by_kind": {},
    }

    def record(kind, fault, status, err, upstream):
        with lock:
            stats["sent"] += 1
            stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + 1
            if fault:
                stats["fault_sent"] += 1
                if status is None:
                    stats["fault_no_answer"] += 1
                else:
                    stats["fault_status"][str(status)] = stats["fault_status"].get(str(status), 0) + 1
                    if upstream:
                        stats["fault_unexpected"] += 1
                return
            if status is None:
                stats["lost"] += 1
                if len(stats["lost_examples"]) < 20:
                    stats["lost_examples"].append(f"{kind}: {err}")
            else:
                stats["answered"] += 1
                stats["from_upstream"] += int(upstream)
                stats["status"][str(status)] = stats["status"].get(str(status), 0) + 1

    def worker(i):
        rnd = random.Random(i)
        conn = None
        n = 0
        while time.time() < deadline:
            n += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            ip = f"10.{i}.{(n >> 8) & 255}.{n & 255}" if rnd.random() < 0.5 else \
                f"2001:db8:{i:x}:{n & 0xffff:x}::1"
            headers = {"x-forwarded-for": ip}
            fault = rnd.choice(FAULTS) if rnd.random() < 0.02 else None
            if fault:
                headers["x-fault"] = fault
            r = rnd.random()
            if r < 0.5:
                kind, method, path, body = "get", "GET", f"/api/ping?n={n}", None
            elif r < 0.85:
                kind, method, path = "login", "POST", "/api/v2/login/account"
                body = json.dumps({"account": f"user{n % 5000}@example.com", "password": "wrong-Pass1!"})
                headers["content-type"] = "application/json"
            else:
                kind, method, path = "register", "POST", "/api/v2/register/email"
                body = json.dumps({"email": f"new{i}-{n}@example.com", "password": "Str0ng-Pass!"})
                headers["content-type"] = "application/json"
            status, err, upstream = None, None, False
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                upstream = resp.getheader("x-soak-upstream") == "1"
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is data here
                err = f"{type(e).__name__}: {e}"
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
            record(kind, fault, status, err, upstream)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(out, "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream(int(sys.argv[2]))
    elif sys.argv[1] == "client":
        client(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit("usage: soak.py upstream PORT | client PORT SECONDS THREADS OUT.json")
