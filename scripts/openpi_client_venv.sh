#!/usr/bin/env bash
# Make (once) a throwaway venv with the real `openpi-client` package, for the interoperability test
# (tests/test_serve_openpi_client.py). openpi-client 0.1.2 pins numpy < 2, so it cannot live in
# policytrim's own environment; it also imports typing_extensions without declaring it.
#   bash scripts/openpi_client_venv.sh [DIR]    -> prints DIR/bin/python
# DIR defaults to .cache/openpi-client-venv (gitignored). A finished venv is reused (stamp file).
# Exit code 3: the package index could not be reached (the test then skips with that reason).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/openpi-client-venv}
spec="openpi-client==0.1.2 numpy<2 typing_extensions"
stamp="$dir/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ] && [ -x "$dir/bin/python" ]; then
  echo "$(cd "$dir" && pwd)/bin/python"
  exit 0
fi
python=${OPENPI_CLIENT_PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
rm -rf "$dir"
"$python" -m venv "$dir"
# shellcheck disable=SC2086
if ! "$dir/bin/python" -m pip install -q --disable-pip-version-check $spec >&2; then
  if ! "$dir/bin/python" -m pip download -q --no-deps --disable-pip-version-check -d "$dir/.probe" typing_extensions >/dev/null 2>&1; then
    echo "the package index is unreachable: cannot install $spec" >&2
    exit 3
  fi
  echo "installing $spec failed although the package index is reachable" >&2
  exit 1
fi
echo "$spec" > "$stamp"
echo "$(cd "$dir" && pwd)/bin/python"
