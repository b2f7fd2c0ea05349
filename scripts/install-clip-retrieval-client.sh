#!/usr/bin/env sh
# A small separate venv holding clip-retrieval's own ClipClient, for the test that shows the
# server speaks its protocol (tests/unit/test_serve.py). clip-retrieval 2.45 pins pyarrow<16,
# flask, torch, ... which clash with the project's pins, and its ClipClient needs only
# `requests`: so --no-deps, in its own venv, and the project venv stays as constraints.txt says.
# Idempotent. Usage: scripts/install-clip-retrieval-client.sh [VENV_DIR]
set -eu
VENV="${1:-bench/.venvs/clip-retrieval}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import requests, importlib.util as u; assert u.find_spec('clip_retrieval')" 2>/dev/null; then
    echo "install-clip-retrieval-client: $VENV is ready"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "requests>=2.28,<3"
"$VENV/bin/python" -m pip install -q --no-deps "clip-retrieval==2.45.0"
echo "install-clip-retrieval-client: installed into $VENV"
