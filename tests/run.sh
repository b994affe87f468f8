#!/usr/bin/env bash
# The project's test command (the README's second line; .ci/run runs it after fmt and
# clippy, so the two cannot drift):
#
#   1. installs what the tests need on a Debian machine, and nothing the benchmarks need:
#      the packages in every .ci/packages-*.txt and `npm ci` for every committed
#      package.json (tests/install-packages.sh; silent when all is there);
#   2. builds the binaries the tests drive (`cargo build --workspace --bins`);
#   3. runs every test binary, not stopping at the first that fails (`--no-fail-fast`);
#   4. closes with the count over all of them, `tests: N passed, M failed`, and exits
#      non-zero if anything failed.
#
# Lists are discovered, not named here: a branch adds a .ci/packages-<topic>.txt or a
# package.json (with its package-lock.json) and this script picks it up. Arguments are
# passed to `cargo test` (e.g. `tests/run.sh -p muster-tests --test dns`).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
started=$SECONDS

if ! command -v cargo >/dev/null 2>&1; then
    echo "tests/run.sh: cargo not found: install Rust 1.88 or newer (rustup), then run again" >&2
    exit 1
fi

# Committed package.json files (outside node_modules); every file on disk when this is
# not a git checkout.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t npm_manifests < <(git ls-files -- '*package.json' | grep -v '/node_modules/')
else
    mapfile -t npm_manifests < <(find . -name package.json -not -path '*/node_modules/*' \
        -not -path './target/*' | sed 's|^\./||')
fi
npm_dirs=()
for m in "${npm_manifests[@]}"; do
    npm_dirs+=("$(dirname "$m")")
done
shopt -s nullglob
lists=(.ci/packages-*.txt)
shopt -u nullglob
tests/install-packages.sh "${lists[@]}" "${npm_dirs[@]}" || exit 1

echo "== cargo build --workspace --bins"
cargo build --workspace --bins || exit 1

echo "== cargo test --workspace --no-fail-fast $*"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# One line per test binary (cargo's own last summary is that of the empty doc-tests): a
# binary that ran but printed no result (it crashed) counts as one failure.
awk -v status="$status" -v took="$((SECONDS - started))" '
    function close_binary() {
        if (name != "" && !seen) { failed += 1; crashed = crashed "\n  " name " (no result: crashed?)" }
    }
    /^ *(Running|Doc-tests) / { close_binary(); name = $0; sub(/^ *(Running|Doc-tests) /, "", name); sub(/ \(.*$/, "", name); seen = 0; bins += 1 }
    /^test result:/ {
        seen = 1
        for (i = 1; i <= NF; i++) {
            if ($i == "passed;") { p += $(i-1) }
            if ($i == "failed;") { f = $(i-1); failed += f; if (f > 0) failing = failing "\n  " name " (" f ")" }
            if ($i == "ignored;") { ig += $(i-1) }
        }
    }
    END {
        close_binary()
        printf "== %d test binaries, %d ignored, %dm%02ds in all\n", bins, ig, took / 60, took % 60
        if (failing crashed != "") printf "== failed:%s%s\n", failing, crashed
        if (status != 0 && failed == 0) printf "== cargo test exited with status %d (did something not build?)\n", status
        printf "tests: %d passed, %d failed\n", p, failed
    }' "$log"
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
exit 0
