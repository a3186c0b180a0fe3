#!/usr/bin/env bash
# Debian's Chromium and its WebDriver for the browser test (tests/test_ui_browser.py).
#
#   scripts/chromium.sh    install chromium and chromium-driver with apt when missing; print
#                          the two paths (browser, driver) on stdout, one a line
#
# Nothing else is fetched: the browser test runs offline against an api-server on loopback.
set -euo pipefail

say() { echo "chromium.sh: $*" >&2; }

find_browser() { command -v chromium || command -v chromium-browser || true; }
find_driver() { command -v chromedriver || { [[ -x /usr/bin/chromedriver ]] && echo /usr/bin/chromedriver; } || true; }

if [[ -z "$(find_browser)" || -z "$(find_driver)" ]]; then
    if [[ "$(id -u)" != 0 ]]; then
        say "chromium or chromium-driver is missing and we are not root: apt-get install -y chromium chromium-driver"
        exit 1
    fi
    say "installing Debian's chromium and chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be stale on a fresh machine; update only when the install fails.
    apt-get install -y --no-install-recommends chromium chromium-driver >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends chromium chromium-driver >&2; }
fi
find_browser
find_driver
