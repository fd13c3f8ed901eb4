#!/usr/bin/env bash
# A GPU job through the controller: `moex job submit --device cuda` (one rank:
# NCCL refuses two ranks on one GPU) runs `moex worker` on the GPU through
# the CUDA plugin and SUCCEEDS with its output checked against the CPU
# computation. Exits 77 (CTest: skipped), saying why, without a GPU.
#   controller_gpu_job.sh MOEX
set -euo pipefail
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU visible (nvidia-smi -L failed): GPU job through the controller skipped"
  exit 77
fi
source "$(dirname "$0")/../chaos/chaos_lib.sh"
start_controller
id="$(submit --name gpu --world-size 1 --model tiny-dsv3 --device cuda --steps 3 --tokens-per-rank 512 --check)"
wait_for "$id" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 300
"$moex" job status "$id" | grep -v "^  log:"
[ "$(field "$id" "j['state'] + ' ' + j['spec']['transport']")" = "JOB_STATE_SUCCEEDED nccl" ] ||
  fail "the GPU job did not succeed over nccl: $(field "$id" "j['message']")"
echo "PASS"
