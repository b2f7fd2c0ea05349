#!/usr/bin/env sh
# System packages the tests need (Debian/Ubuntu), idempotent: does nothing when they are there.
#   chromium: the headless browser that tests the server's web page (tests/unit/test_serve_page.py
#             skips, saying why, when it is missing).
set -eu
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -z "$missing" ]; then
    echo "install-system-deps: nothing to install"
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
