#!/usr/bin/env bash
# Prints the path of a working promtool (Prometheus's rule checker), fetching it if needed.
#
# Order: $PROMTOOL, promtool on PATH, .local/bin/promtool, else Debian's `prometheus` package:
# only its promtool binary (which needs nothing but libc) is unpacked into .local/bin, so no
# Prometheus server gets installed or started. Fetching needs apt (root runs apt-get update
# first). Fails with a message saying what to install instead of letting tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
local_bin="$PWD/.local/bin"

for candidate in "${PROMTOOL:-}" "$(command -v promtool || true)" "$local_bin/promtool"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
    echo "$candidate"
    exit 0
  fi
done

fail() {
  echo "ensure_promtool: $1. Install Prometheus's promtool (Debian/Ubuntu: apt-get install" \
       "prometheus) or set PROMTOOL=/path/to/promtool." >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "promtool is not installed and apt-get is missing"
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq >&2 || fail "apt-get update failed"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq prometheus >&2) || fail "apt-get download prometheus failed"
dpkg-deb -x "$work"/prometheus_*.deb "$work/root" || fail "could not unpack the prometheus package"
mkdir -p "$local_bin"
install -m 0755 "$work/root/usr/bin/promtool" "$local_bin/promtool"
"$local_bin/promtool" --version >/dev/null 2>&1 || fail "the unpacked promtool does not run here"
echo "$local_bin/promtool"
