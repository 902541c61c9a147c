#!/usr/bin/env bash
# System packages the test suite runs for real (Debian/Ubuntu, as root or with sudo):
#   prometheus  the `prometheus` and `promtool` binaries (tests/test_prometheus.py: config and
#               rule checks, rule unit tests, a live server scraping the API and a worker)
#   chromium    a headless browser for the screenshot test
# Idempotent: nothing is installed when all the binaries are already on PATH.
#
# Debian's prometheus package enables a service that listens on :9090. Tests never use that
# port (they pick free ones), but a stray server would still be one more thing running on a
# CI box: service starts are refused during the install (policy-rc.d, the mechanism
# invoke-rc.d consults; Docker images already ship one) and the service stopped if it ran.
set -euo pipefail

need=()
for bin in prometheus promtool; do
  command -v "$bin" >/dev/null 2>&1 || need=(prometheus)
done
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  need+=(chromium)
fi
if [ "${#need[@]}" -eq 0 ]; then
  echo "install-system: prometheus, promtool and chromium already installed" >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  made_policy=1
fi
cleanup() {
  if [ "$made_policy" -eq 1 ]; then
    $SUDO rm -f "$POLICY"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends prometheus chromium

# If a service manager started it anyway (a box without policy-rc.d support), stop it and
# keep it from starting at boot: the suite runs its own servers on free loopback ports.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

echo "install-system: $(prometheus --version 2>&1 | head -n1)" >&2
echo "install-system: $(promtool --version 2>&1 | head -n1)" >&2
