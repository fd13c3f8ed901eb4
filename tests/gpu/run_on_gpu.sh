#!/usr/bin/env bash
# `moex run --device cuda --transport nccl` against the single-process CPU
# computation (--check, bf16 bound), on the presets that cover both router
# kinds, the shared expert and redundant replicas. One rank: NCCL refuses
# two ranks on one GPU. Exits 77 (CTest: skipped), saying why, without a GPU.
#   run_on_gpu.sh MOEX MPIEXEC
set -uo pipefail
moex="$1"
mpiexec="$2"
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU visible (nvidia-smi -L failed): GPU run skipped"
  exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
run() {
  echo "== moex run $*"
  if ! timeout 300 "$mpiexec" -np 1 --oversubscribe --mca btl self,vader,tcp \
      "$moex" run --device cuda --transport nccl --check --quiet "$@"; then
    echo "FAILED: moex run $*"
    status=1
  fi
}
run --model mini-dsv3 --steps 3 --tokens-per-rank 1024
run --model tiny --steps 2
run --model tiny-dsv3 --steps 2 --redundant-experts 2
# What the GPU path refuses, it refuses with a reason.
out="$("$mpiexec" -np 1 "$moex" run --model tiny --device cuda --steps 1 2>&1)"
if ! grep -q "add --transport nccl" <<<"$out"; then
  echo "FAILED: --device cuda without --transport nccl said: $out"
  status=1
fi
exit $status
