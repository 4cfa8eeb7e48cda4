#!/usr/bin/env bash
# System packages some tests need, from Debian's own archive:
#   chromium    -> /usr/bin/chromium, driven by Playwright in tests/e2e (browser tests)
#   postgresql  -> /usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres}, a throwaway server
#                  for the feedback-store tests on PostgreSQL
#
# Called by `make test`. It checks first and returns at once when both are present, so it
# costs nothing on the second run. It installs only as root with apt-get; anywhere else it
# prints how to enable those tests and exits 0, because they then skip (unless CI=true, where
# the test fixtures turn a missing browser or database into a failure with the reason).
set -u

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Debian's server binaries live under a versioned directory; binaries elsewhere on PATH
# (for example a hand-made /usr/local/bin link) are not what a fresh machine has.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

hint="sudo bash scripts/install-system-deps.sh   (or: sudo apt-get install ${missing[*]})"

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing ${missing[*]}; the tests that need them will skip." >&2
    echo "install-system-deps: to run them: $hint" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: installing ${missing[*]} with apt-get" >&2
start=$(date +%s)
log=$(mktemp)
install() {
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 "${missing[@]}" >"$log" 2>&1
}
# Package lists on a fresh image may be stale or empty: refresh once and retry.
if ! install; then
    apt-get update -qq -o DPkg::Lock::Timeout=120 >>"$log" 2>&1
    if ! install; then
        echo "install-system-deps: apt-get could not install ${missing[*]}:" >&2
        tail -n 20 "$log" >&2
        rm -f "$log"
        # In CI the tests would fail on the missing package anyway; stop here with apt's reason.
        if [ "${CI:-}" = "true" ]; then
            exit 1
        fi
        echo "install-system-deps: the tests that need them will skip; to retry: $hint" >&2
        exit 0
    fi
fi
rm -f "$log"
echo "install-system-deps: installed ${missing[*]} in $(( $(date +%s) - start )) s" >&2
