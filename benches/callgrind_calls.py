#!/usr/bin/env python3
"""Instructions per call of one function in a callgrind dump, and of what it calls.

    callgrind_calls.py DUMP FUNCTION_REGEX [PER]

With PER (e.g. the load test's request count), figures are per PER instead
of per call: an async function's future is polled several times a request.

Reads callgrind's own `calls=` records (exact call counts and inclusive
costs, which `callgrind_annotate` does not print together), so a criterion
bench run under callgrind with `--profile-time` gives instructions per
iteration of a function marked `#[inline(never)]` whatever the iteration
count was. Prints the function's instructions per call, then each callee's
instructions per call of the function (callees under 1% are left out).
"""

import re
import sys
from collections import defaultdict


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    dump, pattern = sys.argv[1], re.compile(sys.argv[2])
    names: dict[str, str] = {}
    # (caller, callee) -> [calls, inclusive instructions]
    edges: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    name_re = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")

    def resolve(line: str) -> str:
        m = name_re.match(line)
        if not m:
            return line.split("=", 1)[1]
        ident, name = m.group(1), m.group(2)
        if name is not None:
            names[ident] = name
        return names.get(ident, ident)

    fn = cfn = ""
    pending = 0
    with open(dump, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if pending:
                # The line after `calls=` holds the call's inclusive cost.
                parts = line.split()
                if len(parts) >= 2:
                    e = edges[(fn, cfn)]
                    e[0] += pending
                    e[1] += int(parts[-1])
                pending = 0
            elif line.startswith("fn="):
                fn = resolve(line)
            elif line.startswith("cfn="):
                cfn = resolve(line)
            elif line.startswith("calls="):
                pending = int(line.split("=", 1)[1].split()[0])

    targets = {callee for (_, callee) in edges if pattern.search(callee)}
    if not targets:
        print(f"no call to a function matching {pattern.pattern!r}", file=sys.stderr)
        return 1
    calls = sum(c for (caller, callee), (c, _) in edges.items()
                if callee in targets and caller not in targets)
    total = sum(i for (caller, callee), (_, i) in edges.items()
                if callee in targets and caller not in targets)
    if calls == 0:
        print("the function was never called", file=sys.stderr)
        return 1
    print(f"{calls} calls, {total:,} instructions (inclusive)", end="")
    if len(sys.argv) == 4:
        calls = int(sys.argv[3])
    per = total / calls
    print(f", {per:,.0f} per {'call' if len(sys.argv) == 3 else sys.argv[3]}")
    inner: dict[str, int] = defaultdict(int)
    for (caller, callee), (_, i) in edges.items():
        if caller in targets and callee not in targets:
            inner[callee] += i
    for callee, i in sorted(inner.items(), key=lambda kv: -kv[1]):
        if i / calls >= per / 100:
            print(f"  {i / calls:8,.0f}  {callee}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
