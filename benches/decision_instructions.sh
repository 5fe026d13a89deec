#!/usr/bin/env bash
# Instructions per login decision, and per part of it, under callgrind.
#
#   benches/decision_instructions.sh            # this tree's decision bench
#   BENCH_BIN=<decision bench binary> benches/decision_instructions.sh
#
# `cargo bench --bench decision` times the decision in nanoseconds, but on a
# shared two-core machine the same build's figure moved by half within an
# hour. Instructions are exact: this runs the bench's whole login decision
# (`Env::decide`, every guard on) under valgrind's callgrind for a fixed
# time and prints its instructions per decision and what each callee costs
# per decision. Under valgrind `sha2` runs its software path (the account
# key's ~3,600 instructions; SHA-NI does it natively in a few hundred).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
bin=${BENCH_BIN:-}
if [ -z "$bin" ]; then
  bin=$(cargo bench --bench decision --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
fi
[ -x "$bin" ] || { echo "no decision bench binary (${bin:-none})" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The bench reads config/ from the crate root, hence the cd above.
valgrind --tool=callgrind --callgrind-out-file="$out/decide.out" \
  "$bin" --bench --profile-time "${PROFILE_SECS:-2}" 'login_decision_all_guards$' \
  >"$out/log" 2>&1 || { tail -20 "$out/log" >&2; exit 1; }
python3 benches/callgrind_calls.py "$out/decide.out" 'decision::Env::decide$'
