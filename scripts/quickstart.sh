#!/usr/bin/env bash
# Installs every dependency, builds moex, and runs the main job on its
# built-in default. Arguments are passed to `moex plan`.
#
# Until the data plane lands, the main job is `moex plan` of the default
# model (DeepSeek-V3): total vs active parameters, FLOPs, memory, GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake --preset default
cmake --build --preset default --parallel "$(nproc)"
echo
exec ./build/default/bin/moex plan "$@"
