#!/usr/bin/env bash
# One entry point for the README's Quickstart: sets up .venv (once) and runs a command in it.
#   bash scripts/run.sh demo [flags]     the embedded demo (policytrim demo)
#   bash scripts/run.sh test [args]      the test suite (pytest) in .venv, then the LeRobot tests
#                                        (tests/with_lerobot) in .venv-lerobot; POLICYTRIM_LEROBOT=0 skips
#                                        the second step
#   bash scripts/run.sh setup            only set up .venv
#   bash scripts/run.sh setup-lerobot    only set up .venv-lerobot (Python 3.12 + policytrim[lerobot])
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in demo|test|setup|setup-lerobot) shift ;; *) echo "usage: bash scripts/run.sh demo|test|setup|setup-lerobot [args]" >&2; exit 2 ;; esac

want=$(cat pyproject.toml scripts/run.sh | python3 -c "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")

setup_main() {
  local python=${PYTHON:-python3} stamp=.venv/.policytrim-installed
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv (torch CPU build first, so pip never pulls a CUDA build) ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
  fi
}

# LeRobot 0.6.1 needs Python >= 3.12 and torch < 2.12 (PyPI's CUDA build, ~5.5 GB installed):
# its own environment. PYTHON312 overrides where Python 3.12 is found.
setup_lerobot() {
  local stamp=.venv-lerobot/.policytrim-installed python=${PYTHON312:-}
  if [ -z "$python" ]; then
    python=$(command -v python3.12 || true)
    [ -n "$python" ] || python="$HOME/.pyenv/versions/3.12.1/bin/python"
  fi
  if [ ! -x .venv-lerobot/bin/python ]; then
    if [ ! -x "$python" ]; then
      echo "error: the LeRobot environment needs Python 3.12 (not found at $python); set PYTHON312=/path/to/python3.12, or POLICYTRIM_LEROBOT=0 to skip" >&2
      exit 2
    fi
    "$python" -m venv .venv-lerobot
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv-lerobot (LeRobot + torch CUDA build from PyPI, ~5.5 GB, a few minutes) ..." >&2
    .venv-lerobot/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,lerobot]"
    echo "$want" > "$stamp"
  fi
}

case "$what" in
  demo) setup_main; exec .venv/bin/policytrim demo "$@" ;;
  test)
    setup_main
    .venv/bin/python -m pytest -q "$@"
    if [ "${POLICYTRIM_LEROBOT:-1}" != "0" ]; then
      setup_lerobot
      echo "LeRobot tests (.venv-lerobot, offline):" >&2
      HF_HUB_OFFLINE=1 .venv-lerobot/bin/python -m pytest -q tests/with_lerobot
    fi
    ;;
  setup) setup_main; echo "ready: .venv/bin/policytrim" ;;
  setup-lerobot) setup_lerobot; echo "ready: .venv-lerobot/bin/policytrim" ;;
esac
