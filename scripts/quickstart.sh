#!/usr/bin/env bash
# Installs every dependency, builds moex, and runs the main job on its
# built-in default: one MoE layer of a scaled-down DeepSeek-V3 (mini-dsv3:
# 64 experts, top-6, a shared expert, sigmoid group-limited routing) across
# 4 ranks under mpirun, checked against a single-process computation.
# Arguments are passed to `moex run` (e.g. --routing-skew 1.2 --steps 10).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake --preset default
cmake --build --preset default --parallel "$(nproc)"
echo

# mpirun refuses root unless told; --oversubscribe lets 4 ranks share fewer cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np 4 --oversubscribe --mca btl self,vader,tcp \
  ./build/default/bin/moex run --model mini-dsv3 --steps 5 --check "$@"
