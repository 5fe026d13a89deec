#!/usr/bin/env bash
# Solver benchmark of poolgate's captcha (issue 10). See README.md here.
#
#   bash benches/captcha_solver/run.sh                 # 300 captchas, all variants
#   SOLVER_N=50 SOLVER_MAX_RATE=0.10 bash benches/captcha_solver/run.sh   # CI
#
# Env: SOLVER_N (captchas, default 300), SOLVER_MAX_RATE (exit 1 when tesseract
# reads more than this fraction of the new captchas), SOLVER_MAX_ANY_RATE (the
# same for the best solver of any kind), SOLVER_VARIANTS
# (comma-separated preprocessing variants of solve.py), SOLVER_JOBS (default 2).
# Needs the `tesseract` CLI (Debian: tesseract-ocr) and Python 3 with venv;
# Pillow and numpy are pip-installed into .venv here (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n="${SOLVER_N:-300}"

command -v tesseract >/dev/null || { echo "tesseract not found (Debian: apt-get install tesseract-ocr)" >&2; exit 2; }
venv="$here/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import PIL, numpy" 2>/dev/null || "$venv/bin/pip" install -q --disable-pip-version-check Pillow numpy

out="$here/out"
rm -rf "$out"
(cd "$root" && cargo run -q --release --example captcha_dump -- "$n" "$out")

args=("$out" --jobs "${SOLVER_JOBS:-2}" --json "$out/result.json")
[ -n "${SOLVER_MAX_RATE:-}" ] && args+=(--max-rate "$SOLVER_MAX_RATE")
[ -n "${SOLVER_MAX_ANY_RATE:-}" ] && args+=(--max-any-rate "$SOLVER_MAX_ANY_RATE")
[ -n "${SOLVER_VARIANTS:-}" ] && args+=(--variants "$SOLVER_VARIANTS")
"$venv/bin/python" "$here/solve.py" "${args[@]}"
