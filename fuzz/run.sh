#!/usr/bin/env bash
# Runs every fuzz target of poolgate for a bounded time and fails on a crash.
#
#   fuzz/run.sh                  # each target 60 s
#   FUZZ_SECS=10 fuzz/run.sh     # each target 10 s
#   fuzz/run.sh origins body     # only these targets
#
# Targets (fuzz/fuzz_targets/):
#   policy    PoolDetail::from_json + WhitelistEntries::from_json + CompiledPolicy::compile
#   origins   OriginMatcher::compile / allows, checked against a reference matcher
#   classify  RouteTable::classify / canonical_path, incl. respelled guarded routes
#   body      extract::body_kind / body_facts / parse_body / graphql (JSON, form, GraphQL)
#   graphql   extract::graphql::calls (JSON, batches, form, application/graphql)
#
# Works on the stable toolchain: `--sanitizer none` (AddressSanitizer needs
# nightly; the code under test has no `unsafe`, so panics, overflows and
# libFuzzer's timeout/out-of-memory checks are what matter). Installs
# cargo-fuzz from crates.io if it is missing; otherwise offline and local:
# nothing is fetched or contacted beyond crates.io for the build.
#
# Each target keeps its corpus in fuzz/corpus/<target>/ (seeded from
# fuzz/regressions/<target>/ when present) so later runs start where earlier
# ones stopped. A crash is written to fuzz/artifacts/<target>/; replay it with
#   cargo fuzz run --sanitizer none -O <target> fuzz/artifacts/<target>/crash-...
# then fix it, add it to tests/fuzz_regressions.rs and keep the input under
# fuzz/regressions/<target>/. Exit status: 0 when every target ran clean;
# 1 when one crashed or the targets failed to build (the other targets still
# run); 3 when cargo-fuzz is missing and cannot be installed (nothing was
# fuzzed: CI reports that as a warning, not as a finding).
set -uo pipefail
cd "$(dirname "$0")"

secs="${FUZZ_SECS:-60}"
case "$secs" in '' | *[!0-9]*) echo "FUZZ_SECS must be a whole number of seconds" >&2; exit 2 ;; esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(policy origins classify body graphql)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked || { echo "cannot install cargo-fuzz" >&2; exit 3; }
fi

# Stable toolchain; libFuzzer's C++ runtime is built by libfuzzer-sys (needs c++).
opts=(--sanitizer none -O)
echo "== building ${targets[*]}"
cargo fuzz build "${opts[@]}" || { echo "fuzz build failed" >&2; exit 1; }

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "regressions/$t" ] && seeds=("regressions/$t")
  log="artifacts/$t.log"
  mkdir -p artifacts
  echo "== $t: ${secs}s"
  # -timeout: one input over 10 s is a finding (a regex or parser gone quadratic);
  # -rss_limit_mb: bounded memory on a shared 2-core machine.
  if cargo fuzz run "${opts[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(grep -Eo '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
    echo "   ok: ${runs:-done} (corpus $(find "corpus/$t" -type f | wc -l) inputs)"
  else
    failed+=("$t")
    echo "   CRASH or failure in $t; last lines of $log:"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/   /'
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${secs}s each without a crash"
