#!/usr/bin/env bash
# Bad input ends a job at load, naming the file, tensor or field, on every
# rank, with nothing left running:
#   a truncated weights file, a weights file with a corrupt header, an input
#   tensor of the wrong shape (moex run under mpirun); a config whose router
#   moex does not support (refused by the controller before anything starts).
#   case_bad_inputs.sh MOEX RESULTS PRESETS_DIR
source "$(dirname "$0")/chaos_lib.sh"
presets="$3"
mpirun=(mpirun -np 2 --oversubscribe --mca btl self,vader,tcp)

"$moex" run --model tiny --steps 1 --quiet --save-weights "$work/w.safetensors" > /dev/null
size="$(stat -c %s "$work/w.safetensors")"
head -c $((size / 2)) "$work/w.safetensors" > "$work/truncated.safetensors"
python3 - "$work" <<'PY'
import json, struct, sys
work = sys.argv[1]
data = open(work + "/w.safetensors", "rb").read()
n = struct.unpack("<Q", data[:8])[0]
open(work + "/corrupt.safetensors", "wb").write(data[:8] + b"{\"x\": [" + b"\x00" * (n - 7) + data[8 + n:])
# hidden_states [4, 7]: tiny's hidden size is 64.
header = json.dumps({"hidden_states": {"dtype": "F32", "shape": [4, 7], "data_offsets": [0, 112]}}).encode()
open(work + "/wrong_shape.safetensors", "wb").write(struct.pack("<Q", len(header)) + header + b"\x00" * 112)
PY

# expect_failure NAME BOUND REGEX WHAT COMMAND...: non-zero, the regex in its output, within BOUND.
expect_failure() {
  local name="$1" bound="$2" regex="$3" what="$4"
  shift 4
  local t0 out
  t0="$(now_ms)"
  if out="$("$@" 2>&1)"; then fail "$name: succeeded"; fi
  local took
  took="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
  grep -Eq "$regex" <<<"$out" || { echo "$out"; fail "$name: the output does not match /$regex/"; }
  echo "  $(grep -E "$regex" <<<"$out" | head -1)"
  [ "$(pgrep -fc "moex run --model tiny --steps 1 --timeout 10" || true)" = 0 ] || fail "$name: ranks left running"
  record "$name" "$bound" "$took" "$what; no process left"
}
expect_failure truncated_weights 10 "truncated.safetensors.*(truncated|shorter|bytes)" \
  "every rank exits non-zero; the error names the file, the tensor and its byte range" \
  "${mpirun[@]}" "$moex" run --model tiny --steps 1 --timeout 10 --weights "$work/truncated.safetensors"
expect_failure corrupt_weights_header 10 "corrupt.safetensors" \
  "exits non-zero naming the file and the header's line and column" \
  "${mpirun[@]}" "$moex" run --model tiny --steps 1 --timeout 10 --weights "$work/corrupt.safetensors"
expect_failure wrong_shape_input 10 "wrong_shape.safetensors.*hidden_states.*(\[4, 7\]|7)" \
  "exits non-zero naming the file, the tensor, its shape and the shape needed" \
  "${mpirun[@]}" "$moex" run --model tiny --steps 1 --timeout 10 --input "$work/wrong_shape.safetensors"

python3 - "$presets/tiny-dsv3.json" "$work/bad_router.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["scoring_func"] = "bogus"
json.dump(c, open(sys.argv[2], "w"))
PY
start_controller --data-root "$work"
expect_failure unsupported_router 3 "scoring_func" "INVALID_ARGUMENT naming the config field; nothing launched" "$moex" job submit --world-size 2 --model "$work/bad_router.json"
[ "$("$moex" job list | grep -c JOB_STATE || true)" = 0 ] || true
[ -z "$(ls "$state_dir/logs" 2>/dev/null)" ] || fail "a job was launched for a refused spec"
