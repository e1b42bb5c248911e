#!/usr/bin/env bash
# Installs Debian's chromium for the browser test (tests/test_ui_browser.py) if it is missing.
# Playwright's own browser download needs the internet; Debian's package comes from the
# distribution's registry. Exits non-zero (and the test then skips, saying how to install it)
# when it cannot install: not root, no apt-get, or the registry refused.
set -u
CHROMIUM=${MLOPS_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and this user cannot apt-get it: run 'sudo apt-get install chromium'" >&2
  exit 1
fi
echo "installing Debian's chromium for the browser test (apt-get, once per machine)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x "$CHROMIUM" ]
