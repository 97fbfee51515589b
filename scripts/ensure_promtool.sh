#!/usr/bin/env bash
# Prints the path of a working promtool (Prometheus's rule checker), fetching it if needed;
# `ensure_promtool.sh prometheus` does the same for the Prometheus server binary (the container
# test scrapes the consumer's image with a real one).
#
# Order: $PROMTOOL (or $PROMETHEUS), the binary on PATH, .local/bin/<binary>, else Debian's
# `prometheus` package: only its promtool and prometheus binaries (which need nothing but libc)
# are unpacked into .local/bin, so nothing gets installed as a service or started. Fetching
# needs apt (root runs apt-get update first). Fails with a message saying what to install
# instead of letting tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
local_bin="$PWD/.local/bin"
binary="${1:-promtool}"
case "$binary" in
  promtool) override="${PROMTOOL:-}" ;;
  prometheus) override="${PROMETHEUS:-}" ;;
  *) echo "ensure_promtool: unknown binary $binary (promtool or prometheus)" >&2; exit 2 ;;
esac

for candidate in "$override" "$(command -v "$binary" || true)" "$local_bin/$binary"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
    echo "$candidate"
    exit 0
  fi
done

fail() {
  echo "ensure_promtool: $1. Install Prometheus's $binary (Debian/Ubuntu: apt-get install" \
       "prometheus) or set ${binary^^}=/path/to/$binary." >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "$binary is not installed and apt-get is missing"
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq >&2 || fail "apt-get update failed"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq prometheus >&2) || fail "apt-get download prometheus failed"
dpkg-deb -x "$work"/prometheus_*.deb "$work/root" || fail "could not unpack the prometheus package"
mkdir -p "$local_bin"
install -m 0755 "$work/root/usr/bin/promtool" "$work/root/usr/bin/prometheus" "$local_bin/"
"$local_bin/$binary" --version >/dev/null 2>&1 || fail "the unpacked $binary does not run here"
echo "$local_bin/$binary"
