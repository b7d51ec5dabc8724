#!/usr/bin/env bash
# Headless Chromium for the HTML report tests (tests/browser.py, tests/test_report_html.py),
# on Debian 12, run as root.
#
#   bash .ci/browser.sh install   apt-get install chromium (idempotent, quiet; skipped when a
#                                 `chromium` is already on PATH)
#   bash .ci/browser.sh version   print the version of the Chromium the tests would use
#
# The tests run Chromium with --headless=new --no-sandbox (root) and a host resolver that maps
# every name to nothing, so a report page can never fetch anything. HARNESS_CHROMIUM=/path/to/binary
# overrides the lookup (chromium, chromium-browser, google-chrome on PATH).
# Progress and diagnostics go to stderr.
set -euo pipefail

PACKAGES=(chromium)

log() { printf '[browser] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

do_install() {
    if command -v chromium >/dev/null 2>&1; then log "chromium already installed"; return 0; fi
    [[ $(id -u) == 0 ]] || die "install needs root"
    log "installing: ${PACKAGES[*]}"
    local rc=0 aptlog t0=$SECONDS
    aptlog=$(mktemp)
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${PACKAGES[@]}"
    } >"$aptlog" 2>&1 || rc=$?
    if ((rc != 0)); then tail -n 30 "$aptlog" >&2; rm -f "$aptlog"; die "apt-get failed (rc $rc)"; fi
    rm -f "$aptlog"
    command -v chromium >/dev/null 2>&1 || die "apt-get succeeded but no chromium on PATH"
    log "installed in $((SECONDS - t0)) s: $(chromium --version 2>/dev/null || echo '?')"
}

do_version() {
    local b=${HARNESS_CHROMIUM:-}
    if [[ -z $b ]]; then
        for b in chromium chromium-browser google-chrome ""; do
            [[ -n $b ]] && command -v "$b" >/dev/null 2>&1 && break
        done
    fi
    [[ -n $b ]] || die "no Chromium found: run 'bash .ci/browser.sh install'"
    "$b" --version
}

cmd=${1:-}
shift || true
case $cmd in
    install) do_install ;;
    version) do_version ;;
    *)
        sed -n '2,12p' "$0" >&2
        exit 2
        ;;
esac
