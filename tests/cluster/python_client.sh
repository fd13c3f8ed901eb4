#!/usr/bin/env bash
# The Python client (python/, package moex_client) against a real moex serve:
# a venv over Debian's python3-grpcio and python3-protobuf, `pip install
# ./python` offline (the stubs generated from proto/ by protoc and
# grpc_python_plugin at build time), then python/tests/test_client.py.
# Skips (77) where /usr/bin/python3 lacks what it needs, saying what.
# Usage: python_client.sh MOEX_BINARY SOURCE_DIR WORK_DIR
set -euo pipefail
moex="$1" src="$2" work="$3"
py="${MOEX_TEST_PYTHON:-/usr/bin/python3}"  # Debian's: the one with python3-grpcio
skip() { echo "SKIP: $*"; exit 77; }
[ -x "$moex" ] || { echo "python_client.sh: no moex binary at '$moex'"; exit 1; }
[ -x "$py" ] || skip "$py is missing (apt-get install python3)"
"$py" -c 'import grpc, google.protobuf' 2>/dev/null ||
  skip "$py cannot import grpc and google.protobuf (apt-get install python3-grpcio python3-protobuf)"
"$py" -c 'import ensurepip, venv' 2>/dev/null || skip "$py has no venv/ensurepip (apt-get install python3-venv)"
"$py" -c 'import setuptools, wheel' 2>/dev/null ||
  skip "$py cannot import setuptools and wheel (apt-get install python3-setuptools python3-wheel)"

rm -rf "$work"
mkdir -p "$work"
"$py" -m venv --system-site-packages "$work/venv"
# Offline: no index, no dependencies fetched (Debian's grpcio and protobuf
# come through --system-site-packages), no build isolation (Debian's
# setuptools). Its build files go under $work, not into the source tree.
MOEX_CLIENT_BUILD_DIR="$work/build" timeout 300 "$work/venv/bin/pip" install --no-index --no-deps \
  --no-build-isolation --disable-pip-version-check --quiet "$src/python"
# From $work, so that the installed package is the one imported (not python/).
cd "$work"
"$work/venv/bin/python" -c 'import moex_client, sys; assert moex_client.__file__.startswith(sys.prefix), moex_client.__file__'
MOEX_BIN="$moex" exec timeout 240 "$work/venv/bin/python" "$src/python/tests/test_client.py" -v
