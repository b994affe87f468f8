#!/usr/bin/env bash
# Installs what the given lists ask for, on Debian, and nothing else:
#
#   tests/install-packages.sh FILE_OR_DIR...
#
# A FILE lists packages one a line, `apt:NAME` or `pip:NAME==VERSION` (`#` starts a
# comment): the test lists are .ci/packages-*.txt, the benchmarks' .ci/bench-packages-*.txt.
# A DIR holds a committed package.json and package-lock.json: `npm ci` installs it.
#
# Idempotent and silent when everything is there: apt packages are looked up with dpkg,
# pip packages by their installed version, npm directories by a stamp of their lock file;
# only what is missing is installed. python3's pip and node's npm are installed from apt only
# when missing (node may come from elsewhere, e.g. NodeSource, whose nodejs conflicts with
# Debian's npm). Runs apt as root (through sudo when not root); pip and npm as the caller.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo --preserve-env=DEBIAN_FRONTEND "$@"; fi
}

trim() {
    local s="$1"
    s="${s#"${s%%[![:space:]]*}"}"
    printf '%s' "${s%"${s##*[![:space:]]}"}"
}

apt_wanted=()
pip_wanted=()
npm_dirs=()
for arg in "$@"; do
    if [ -d "$arg" ]; then
        if [ ! -f "$arg/package.json" ] || [ ! -f "$arg/package-lock.json" ]; then
            echo "install-packages: $arg: needs package.json and package-lock.json" >&2
            exit 1
        fi
        npm_dirs+=("$arg")
        continue
    fi
    if [ ! -f "$arg" ]; then
        echo "install-packages: $arg: no such file or directory" >&2
        exit 1
    fi
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line="$(trim "${line%%#*}")"
        case "$line" in
            "") ;;
            apt:*) apt_wanted+=("$(trim "${line#apt:}")") ;;
            pip:*==*) pip_wanted+=("$(trim "${line#pip:}")") ;;
            pip:*)
                echo "install-packages: $arg:$n: pin the version: pip:NAME==VERSION" >&2
                exit 1
                ;;
            *)
                echo "install-packages: $arg:$n: expected apt:NAME or pip:NAME==VERSION, got: $line" >&2
                exit 1
                ;;
        esac
    done <"$arg"
done

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Tools the lists rely on, from apt only when missing.
if [ "${#pip_wanted[@]}" -gt 0 ] && ! python3 -m pip --version >/dev/null 2>&1; then
    apt_wanted+=(python3 python3-pip)
fi
if [ "${#npm_dirs[@]}" -gt 0 ] && ! command -v npm >/dev/null 2>&1; then
    apt_wanted+=(nodejs npm)
fi

apt_missing=()
for p in "${apt_wanted[@]}"; do
    installed "$p" || [[ " ${apt_missing[*]} " == *" $p "* ]] || apt_missing+=("$p")
done
if [ "${#apt_missing[@]}" -gt 0 ]; then
    echo "== apt-get install ${apt_missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

pip_missing=()
for spec in "${pip_wanted[@]}"; do
    name="${spec%%==*}"
    want="${spec#*==}"
    have="$(python3 -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$name" 2>/dev/null || true)"
    [ "$have" = "$want" ] || pip_missing+=("$spec")
done
if [ "${#pip_missing[@]}" -gt 0 ]; then
    echo "== pip install ${pip_missing[*]}"
    # For the python3 the tests run (as this user: system-wide for root, else the user's
    # site). Debian marks its python3 as managed by apt (PEP 668); these pinned libraries
    # have no Debian package at these versions, so pip installs them beside apt's.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet "${pip_missing[@]}"
fi

for dir in "${npm_dirs[@]}"; do
    stamp="$dir/node_modules/.installed-from-lock"
    lock_sum="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_sum" ]; then
        continue
    fi
    echo "== npm ci --prefix $dir"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
    echo "$lock_sum" >"$stamp"
done
