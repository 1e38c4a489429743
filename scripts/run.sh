#!/usr/bin/env bash
# One entry point for the README's Quickstart: sets up .venv (once) and runs a command in it.
#   bash scripts/run.sh demo [flags]   the embedded demo (policytrim demo)
#   bash scripts/run.sh test [args]    the test suite (pytest)
#   bash scripts/run.sh setup          only set up .venv
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in demo|test|setup) shift ;; *) echo "usage: bash scripts/run.sh demo|test|setup [args]" >&2; exit 2 ;; esac

python=${PYTHON:-python3}
stamp=.venv/.policytrim-installed
want=$(cat pyproject.toml scripts/run.sh | "$python" -c "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (torch CPU build first, so pip never pulls a CUDA build) ..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,serve]"
  echo "$want" > "$stamp"
fi
# The tests also cover the Ray backend (policytrim[ray]: ~22 s, ~240 MB here); the demo does not need it.
if [ "$what" = test ] && [ "$(cat "$stamp-ray" 2>/dev/null)" != "$want" ]; then
  echo "installing Ray for the Ray backend's tests ..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,serve,ray]"
  echo "$want" > "$stamp-ray"
fi

case "$what" in
  demo) exec .venv/bin/policytrim demo "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  setup) echo "ready: .venv/bin/policytrim" ;;
esac
