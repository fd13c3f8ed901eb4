#!/usr/bin/env bash
# Mutual TLS end to end: a throwaway CA signs the controller's and a client's
# certificates; a job runs (its ranks talk TLS too); calls without a client
# certificate, or in plaintext, are refused.
set -euo pipefail
moex="$1"
dir="$(mktemp -d)"
port=0  # the controller picks a free one; we read it back
serve=""
trap '[ -n "$serve" ] && kill $serve 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=moex-test-ca 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n" > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 1 -extfile $who.ext 2>/dev/null
done
"$moex" serve --listen "127.0.0.1:${port}" --state-dir state --tls-cert server.pem --tls-key server.key \
  --tls-client-ca ca.pem > serve.out 2>&1 &
serve=$!
for _ in $(seq 100); do grep -q listening serve.out && break; sleep 0.1; done
port="$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' serve.out)"
export MOEX_CONTROLLER="127.0.0.1:${port}"
out="$("$moex" job --tls-ca ca.pem --tls-cert client.pem --tls-key client.key submit --name tls --world-size 2 --model tiny --steps 2 --wait)"
echo "$out"
grep -q SUCCEEDED <<<"$out"
# Each refusal says what failed (before: every one was "no controller at
# ADDR", as if nothing listened there).
refused() {  # refused WHAT EXPECTED [moex job flags...]: the call fails, saying EXPECTED
  local what="$1" expected="$2"; shift 2
  if "$moex" job "$@" list 2> err.out; then echo "$what was served"; exit 1; fi
  echo "  $what: $(grep 'moex job: error' err.out)"
  grep -q "moex job: error: $expected" err.out || { echo "$what: the error does not say '$expected'"; exit 1; }
}
refused "a call without a client certificate" "the connection to $MOEX_CONTROLLER failed: .*mutual TLS" --tls-ca ca.pem
refused "a plaintext call" "the connection to $MOEX_CONTROLLER failed: .*serves TLS.*--tls-ca" 
openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 1 -subj /CN=other-ca 2>/dev/null
refused "a call trusting another CA" "the TLS handshake with $MOEX_CONTROLLER failed" --tls-ca other.pem \
  --tls-cert client.pem --tls-key client.key
kill "$serve"; wait "$serve" 2>/dev/null || true; serve=""
refused "a call to a port nobody listens on" "no controller at $MOEX_CONTROLLER" --tls-ca ca.pem \
  --tls-cert client.pem --tls-key client.key
echo "tls session: ok"
