#!/usr/bin/env bash
# Installs Debian's chromium, when it is missing, for the test that opens the
# report in a real browser (tests/lab/test_report_browser.py; Playwright drives
# it and downloads no browser of its own). `make test` runs this.
#
# It says in one line what it does. apt's output (some 500 lines) goes to a log
# that is shown only when a step fails.
#   --no-install-recommends: the 25 new packages chromium needs, instead of the
#     116 that its recommends pull in (udev, upower, perl modules, ...) along
#     with upgrades of 15 installed ones (systemd, perl, gdk-pixbuf), as
#     `apt-get install -s` showed on this project's Debian 12 machines.
#   --no-upgrade, and never `apt-get upgrade`: what is installed stays as it is.
#     Should chromium's own dependencies need a newer version of something
#     installed, the simulation below names it before anything changes.
# fonts-liberation (a recommend) is kept: the report's text is drawn in it.
set -euo pipefail

packages=(chromium fonts-liberation)
log=${ADAPTIM_APT_LOG:-/tmp/adaptim-apt-chromium.log}
apt_install=(apt-get install -y -q --no-install-recommends --no-upgrade)

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "browser: chromium is missing and this is not root, so the report's browser test will skip (CI needs it: apt-get install --no-install-recommends chromium)"
  exit 0
fi

fail() {
  cat "$log" >&2
  echo "browser: '$1' failed; apt's output is above and in $log" >&2
  exit 1
}

echo "browser: installing Debian's chromium (about 116 MB to download, 400 MB on disk) for the test that opens the report in a real browser; apt's log: $log"
export DEBIAN_FRONTEND=noninteractive
apt-get update >"$log" 2>&1 || fail "apt-get update"
simulated=$("${apt_install[@]}" -s "${packages[@]}" 2>>"$log") || fail "apt-get install -s"
upgrades=$(awk '/^Inst [^ ]+ \[/ { printf "%s ", $2 }' <<<"$simulated")
if [ -n "$upgrades" ]; then
  echo "browser: chromium's dependencies need newer versions of installed packages: $upgrades"
fi
"${apt_install[@]}" "${packages[@]}" >>"$log" 2>&1 || fail "apt-get install"
