#!/usr/bin/env bash
# One entry point for the README's Quickstart: sets up .venv (once) and runs a command in it.
#   bash scripts/run.sh demo [flags]        the embedded demo (policytrim demo)
#   bash scripts/run.sh test [args]         the test suite (pytest) in .venv; a full-suite run (no test
#                                           paths given) first lints (ruff check + ruff format --check;
#                                           POLICYTRIM_LINT=0 skips it), then also the docs site's strict build
#                                           (POLICYTRIM_DOCS=0 skips it), the LIBERO tests in .venv-libero
#                                           (POLICYTRIM_LIBERO_TESTS=0 skips them), then the ManiSkill3
#                                           tests (tests/with_maniskill) in .venv-maniskill
#                                           (POLICYTRIM_MANISKILL=0 skips them), then the LeRobot
#                                           tests (tests/with_lerobot) in .venv-lerobot
#                                           (POLICYTRIM_LEROBOT=0 skips them); any failing step fails
#   bash scripts/run.sh setup               only set up .venv
#   bash scripts/run.sh docs [serve]        build the docs site strictly into site/ (serve: at 127.0.0.1:8000)
#   bash scripts/run.sh test-libero [args]  the LIBERO tests in .venv-libero (set up on demand)
#   bash scripts/run.sh setup-maniskill     only set up .venv-maniskill (torch CPU + policytrim[maniskill])
#   bash scripts/run.sh test-maniskill [args] the ManiSkill3 tests in .venv-maniskill (set up on demand)
#   bash scripts/run.sh setup-lerobot       only set up .venv-lerobot (Python 3.12 + policytrim[lerobot])
#   bash scripts/run.sh test-lerobot [args] the LeRobot tests in .venv-lerobot (set up on demand)
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in demo|test|setup|docs|test-libero|setup-maniskill|test-maniskill|setup-lerobot|test-lerobot) shift ;; *) echo "usage: bash scripts/run.sh demo|test|setup|docs|test-libero|setup-maniskill|test-maniskill|setup-lerobot|test-lerobot [args]" >&2; exit 2 ;; esac

python=${PYTHON:-python3}
full_suite=1
for arg in "$@"; do case "$arg" in -*) ;; *) full_suite=0 ;; esac; done
# A full-suite run spreads each suite's test files over POLICYTRIM_TEST_WORKERS pytest-xdist workers
# (default 2; 1 runs them in one process, as a run given test paths always does). Whole files go to
# one worker (--dist loadfile), so a file's module fixtures are built once.
parallel=()
workers=${POLICYTRIM_TEST_WORKERS:-2}
case "$workers" in ''|*[!0-9]*|0*) echo "error: POLICYTRIM_TEST_WORKERS must be a whole number >= 1, got '$workers'" >&2; exit 2 ;; esac
if [ "$full_suite" = 1 ] && [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadfile); fi
stamp=.venv/.policytrim-installed
want=$(cat pyproject.toml scripts/run.sh | "$python" -c "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
case "$what" in test-libero|setup-maniskill|test-maniskill|setup-lerobot|test-lerobot) main_venv=0 ;; *) main_venv=1 ;; esac
# Bytecode: pip installs without compiling (--no-compile: torch alone installs in 16 s instead of 45 s
# here), and Python writes a module's bytecode when a process first imports it, so only what is used
# gets compiled, once. Where PYTHONDONTWRITEBYTECODE is set (as on this machine) nothing would ever
# write it and every process would compile its modules' sources again (`import torch`: 6.3 s instead of
# 2.3 s; LeRobot's SmolVLA: 37 s instead of 17), so the commands below cache it in the environments.
unset PYTHONDONTWRITEBYTECODE
# The main environment (.venv), with Ray for the tests and MkDocs for the docs site.
setup_main() {
  [ "$main_venv" = 1 ] || return 0
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv (torch CPU build first, so pip never pulls a CUDA build) ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile torch==2.13.0
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,serve]"
    echo "$want" > "$stamp"
  fi
  # The tests also cover the Ray backend (policytrim[ray]: ~22 s, ~240 MB here); the demo does not need it.
  if [ "$what" = test ] && [ "$(cat "$stamp-ray" 2>/dev/null)" != "$want" ]; then
    echo "installing Ray for the Ray backend's tests ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,serve,ray]"
    echo "$want" > "$stamp-ray"
  fi
  # The docs site (mkdocs.yml, the `docs` extra): built strictly by `test` after the main suite, and by `docs`.
  if { [ "$what" = test ] || [ "$what" = docs ]; } && [ "$(cat "$stamp-docs" 2>/dev/null)" != "$want" ]; then
    echo "installing MkDocs for the docs site ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,serve,docs]"
    echo "$want" > "$stamp-docs"
  fi
}

# A broken link, a missing anchor or a page left out of the nav fails the build (mkdocs.yml: strict;
# not --quiet, which hides the warnings and with them the failure).
docs_build() {
  local out
  out=$(mktemp -d)
  echo "docs site (mkdocs build --strict):" >&2
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$out"
  rm -rf "$out"
}

# LIBERO lives in its own venv (.venv-libero: robosuite, mujoco, ~1.3 GB of assets on top of torch),
# set up on demand; its tests run after a full-suite run (no test paths given), unless
# POLICYTRIM_LIBERO_TESTS=0. Measured here (2 cores, load ~8): setup 161 s, tests/test_libero.py 88 s;
# tests/test_libero_pipeline.py (collect -> pretrain -> train -> eval from the CLI) 90 s (one env worker).
# tests/test_libero_collect.py (collect with both cameras at 32 px, and state-only: one episode each) 46 s of CPU.
setup_libero() {
  local lstamp=.venv-libero/.policytrim-installed
  if [ ! -x .venv-libero/bin/python ]; then "$python" -m venv .venv-libero; fi
  if [ "$(cat "$lstamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv-libero (torch CPU build, policytrim[dev,libero]) ..." >&2
    .venv-libero/bin/python -m pip install -q --disable-pip-version-check --no-compile torch==2.13.0
    .venv-libero/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,libero]"
    echo "$want" > "$lstamp"
  fi
}

libero_tests() {
  await_setup libero setup_libero
  echo "LIBERO tests (.venv-libero):" >&2
  # POLICYTRIM_REQUIRE: here a LIBERO that does not import fails the tests instead of skipping them
  POLICYTRIM_REQUIRE=libero .venv-libero/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" \
    tests/test_libero.py tests/test_libero_pro.py tests/test_libero_pipeline.py tests/test_libero_collect.py "$@"
}

# ManiSkill3 lives in its own venv (.venv-maniskill: SAPIEN, mplib, numpy < 2), set up on demand; its
# tests run after a full-suite run unless POLICYTRIM_MANISKILL=0, and fail (not skip) there when
# mani_skill is missing. Measured here (2 cores shared, loaded): setup ~110 s, tests ~50 s.
setup_maniskill() {
  local mstamp=.venv-maniskill/.policytrim-installed
  if [ ! -x .venv-maniskill/bin/python ]; then "$python" -m venv .venv-maniskill; fi
  if [ "$(cat "$mstamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv-maniskill (torch CPU build, policytrim[dev,maniskill]) ..." >&2
    .venv-maniskill/bin/python -m pip install -q --disable-pip-version-check --no-compile torch==2.13.0
    .venv-maniskill/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,maniskill]"
    echo "$want" > "$mstamp"
  fi
}

maniskill_tests() {
  await_setup maniskill setup_maniskill
  echo "ManiSkill3 tests (.venv-maniskill):" >&2
  # POLICYTRIM_REQUIRE: here a ManiSkill that does not import fails the tests instead of skipping them
  POLICYTRIM_REQUIRE=maniskill .venv-maniskill/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" \
    tests/with_maniskill "$@"
}

# LeRobot 0.6.1 needs Python >= 3.12 and torch < 2.12 (PyPI's CUDA build, ~5.5 GB installed):
# its own environment. PYTHON312 overrides where Python 3.12 is found. No system FFmpeg is needed:
# policytrim has LeRobot decode videos with PyAV (its wheel bundles FFmpeg), never torchcodec.
setup_lerobot() {
  local lstamp=.venv-lerobot/.policytrim-installed python312=${PYTHON312:-}
  if [ -z "$python312" ]; then
    # the first candidate that really runs Python 3.12 (a pyenv shim named python3.12 may exist and fail)
    for candidate in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python; do
      if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
        python312=$candidate; break
      fi
    done
  fi
  if [ ! -x .venv-lerobot/bin/python ]; then
    if [ -z "$python312" ] || [ ! -x "$python312" ]; then
      echo "error: the LeRobot environment needs Python 3.12 (none found: python3.12 on PATH, ~/.pyenv/versions/3.12*); set PYTHON312=/path/to/python3.12, or POLICYTRIM_LEROBOT=0 to skip" >&2
      exit 2
    fi
    "$python312" -m venv .venv-lerobot
  fi
  if [ "$(cat "$lstamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv-lerobot (LeRobot + torch CUDA build from PyPI, ~5.5 GB, a few minutes) ..." >&2
    .venv-lerobot/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[dev,lerobot]"
    echo "$want" > "$lstamp"
  fi
}

lerobot_tests() {
  await_setup lerobot setup_lerobot
  echo "LeRobot tests (.venv-lerobot, offline):" >&2
  # POLICYTRIM_REQUIRE: here a LeRobot that does not import fails the tests instead of skipping them
  # LIBERO demonstrations collected in .venv-libero (where it exists) are converted here
  # (tests/with_lerobot/test_lerobot_libero_collect.py; skipped without it)
  local libero_python=""
  if [ -x .venv-libero/bin/python ]; then libero_python=$PWD/.venv-libero/bin/python; fi
  POLICYTRIM_REQUIRE=lerobot HF_HUB_OFFLINE=1 POLICYTRIM_LIBERO_PYTHON=$libero_python \
    .venv-lerobot/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/with_lerobot "$@"
}

# A full-suite `test` sets the optional environments up in the background once .venv is ready, while
# the main suite runs (their pip installs are downloads and unpacking: run one after another they were
# ~12 of 44 minutes on a slow 2-core machine), each logged to a file, and waits for each before its tests.
declare -A setup_pids=()
setup_logs=""
background_setup() {  # NAME FUNCTION
  [ -n "$setup_logs" ] || setup_logs=$(mktemp -d)
  ( start=$SECONDS; "$2"; echo "$((SECONDS - start))" >"$setup_logs/$1.seconds" ) >"$setup_logs/$1.log" 2>&1 &
  setup_pids[$1]=$!
}
await_setup() {  # NAME FUNCTION: wait for NAME's background setup (its log shown if it failed), else run FUNCTION
  local pid=${setup_pids[$1]:-} rc=0 waited=$SECONDS
  if [ -z "$pid" ]; then "$2"; return; fi
  wait "$pid" || rc=$?
  unset "setup_pids[$1]"
  if [ "$rc" != 0 ]; then
    echo "setting up the $1 environment failed (exit $rc):" >&2
    cat "$setup_logs/$1.log" >&2
    exit "$rc"
  fi
  echo "the $1 environment: set up in the background in $(cat "$setup_logs/$1.seconds") s, waited for $((SECONDS - waited)) s" >&2
}
# a failed step leaves no setup running behind it (its stamp is not written, so the next run redoes it)
trap 'for pid in "${setup_pids[@]}"; do kill "$pid" 2>/dev/null || true; done; [ -z "$setup_logs" ] || rm -rf "$setup_logs"' EXIT

setup_main
if [ "$what" = test ] && [ "$full_suite" = 1 ]; then
  if [ "${POLICYTRIM_LIBERO_TESTS:-1}" != 0 ]; then background_setup libero setup_libero; fi
  if [ "${POLICYTRIM_MANISKILL:-1}" != 0 ]; then background_setup maniskill setup_maniskill; fi
  if [ "${POLICYTRIM_LEROBOT:-1}" != 0 ]; then background_setup lerobot setup_lerobot; fi
  if [ "${#setup_pids[@]}" -gt 0 ]; then
    echo "setting up the optional environments (${!setup_pids[*]}) in the background, logs in $setup_logs" >&2
  fi
fi

case "$what" in
  demo) exec .venv/bin/policytrim demo "$@" ;;
  test)
    if [ "$full_suite" = 1 ] && [ "${POLICYTRIM_LINT:-1}" != 0 ]; then
      echo "lint (ruff check, ruff format --check):" >&2
      .venv/bin/ruff check --quiet .
      .venv/bin/ruff format --check .
    fi
    .venv/bin/python -m pytest -q "${parallel[@]}" "$@"
    if [ "$full_suite" = 1 ] && [ "${POLICYTRIM_DOCS:-1}" != 0 ]; then docs_build; fi
    if [ "$full_suite" = 1 ] && [ "${POLICYTRIM_LIBERO_TESTS:-1}" != 0 ]; then libero_tests; fi
    if [ "$full_suite" = 1 ] && [ "${POLICYTRIM_MANISKILL:-1}" != 0 ]; then maniskill_tests; fi
    if [ "$full_suite" = 1 ] && [ "${POLICYTRIM_LEROBOT:-1}" != 0 ]; then lerobot_tests; fi ;;
  setup) echo "ready: .venv/bin/policytrim" ;;
  docs)
    if [ "${1:-}" = serve ]; then shift; NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs serve --strict "$@"; fi
    NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict "$@"; echo "docs site: site/index.html" ;;
  test-libero) libero_tests "$@" ;;
  setup-maniskill) setup_maniskill; echo "ready: .venv-maniskill/bin/policytrim" ;;
  test-maniskill) maniskill_tests "$@" ;;
  setup-lerobot) setup_lerobot; echo "ready: .venv-lerobot/bin/policytrim" ;;
  test-lerobot) lerobot_tests "$@" ;;
esac
