#!/usr/bin/env bash
# Set up segface-hf in a virtual environment at .venv in the repository root.
#
#   bash scripts/setup.sh          the package with the demo's extras (Gradio, face detector)
#   bash scripts/setup.sh --dev    everything the test suite needs, including Debian's chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."

extras="demo,faces"
if [[ "${1:-}" == "--dev" ]]; then
    extras="dev"
    if [[ ! -x /usr/bin/chromium ]]; then
        if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        else
            echo "setup: /usr/bin/chromium is missing; install Debian's chromium (sudo apt-get install chromium) for tests/test_space_browser.py" >&2
        fi
    fi
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Within the versions the tests last passed with (constraints.txt says why): a deterministic install, no backtracking.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
