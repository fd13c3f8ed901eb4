#!/usr/bin/env bash
# shape_test.sh NAME: on a cluster NAME of its own, `shape` makes a host's
# link the slow one, both ways, and `unshape` undoes it. 2 MiB from h0 to h1
# over TCP, timed at h0 from connect
# to h1's acknowledgement: milliseconds unshaped; at 20 Mbit/s at least
# (2 MiB - the 256 KiB burst) * 8 / 20 Mbit/s = 0.73 s. Delay (netem) too,
# where the kernel has it: 100 ms each way adds at least two round trips.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1"
"$VCLUSTER" check >/dev/null || exit 77
command -v tc >/dev/null || { echo "no 'tc' (package iproute2)" >&2; exit 77; }
# A cluster of its own: a shaped link would slow the other tests' hosts.
trap '"$VCLUSTER" down "$name" >/dev/null' EXIT
"$VCLUSTER" up --replace "$name" 2 1
h1_address="$("$VCLUSTER" exec "$name" h1 sh -c 'getent hosts "$(hostname)"' | awk '{print $1}')"

receive='
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 45017)); s.listen(1); print("listening", flush=True)
c, _ = s.accept()
while c.recv(1 << 16): pass
c.sendall(b"ok"); c.close()'
send='
import socket, sys, time
t0 = time.monotonic()
c = socket.create_connection((sys.argv[1], 45017), timeout=30)
c.sendall(bytes(2 << 20)); c.shutdown(socket.SHUT_WR)
assert c.recv(2) == b"ok"
print(f"{time.monotonic() - t0:.3f}")'

# Seconds to send 2 MiB from h0 to h1.
send_seconds() {
  local ready
  ready="$(mktemp -u)"
  mkfifo "$ready"
  "$VCLUSTER" exec "$name" h1 python3 -c "$receive" >"$ready" &
  local receiver=$!
  read -r _ <"$ready"
  rm -f "$ready"
  "$VCLUSTER" exec "$name" h0 python3 -c "$send" "$h1_address"
  wait "$receiver"
}

plain="$(send_seconds)"
"$VCLUSTER" shape "$name" h1 20mbit 0
qdiscs="$(tc qdisc show dev "vce-$name-1"; tc -n "vc-$name-h1" qdisc show dev eth0)"
[[ "$(grep -c tbf <<<"$qdiscs")" == 2 ]] || fail "expected tbf on both ends of h1's veth: $qdiscs"
shaped="$(send_seconds)"
"$VCLUSTER" unshape "$name" h1
again="$(send_seconds)"
echo "2 MiB from h0 to h1: $plain s unshaped, $shaped s at 20mbit, $again s unshaped again"
python3 -c "import sys; p, s, a = map(float, sys.argv[1:]); sys.exit(0 if s >= 0.65 and p < 0.3 and a < 0.3 else 1)" \
  "$plain" "$shaped" "$again" || fail "the rate did not show in the times"

if out="$("$VCLUSTER" shape "$name" h1 0 100ms 2>&1)"; then
  delayed="$(send_seconds)"
  "$VCLUSTER" unshape "$name" h1
  echo "2 MiB from h0 to h1 with 100 ms each way: $delayed s"
  python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 0.4 else 1)" "$delayed" || fail "the delay did not show"
elif [[ "$out" == *"no netem"* ]]; then
  echo "not checked: delay ($out)"
else
  fail "shape with a delay: $out"
fi
echo "PASS"
