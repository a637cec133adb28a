#!/usr/bin/env bash
# WasteLedger side by side with etcd on this machine, in one run so machine drift cancels out.
#
# Installs etcd from the distribution's packages (etcd-server) if it is missing, starts a
# 3-member etcd cluster on loopback with its default fsync behaviour, drives it with puts of
# ~512-byte values, then starts a 3-node WasteLedger cluster (fsync on, production settings)
# and drives it with signed manifest lifecycles at the same concurrency levels, through the
# same client code (crates/bench). Prints both tables and the ratios WasteLedger / etcd.
#
#   bench/compare-etcd.sh [CLIENTS] [EVENTS]      e.g. bench/compare-etcd.sh 1,16,64 5000
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${1:-1,16,64}"
EVENTS="${2:-5000}"

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "== installing etcd-server and etcd-client from the distribution's packages"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi

echo "== building the load generator and the node (release)"
cargo build --release --locked -q -p wasteledger -p wasteledger-bench
BENCH=target/release/wasteledger-bench

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a CPORT PPORT
for i in 1 2 3; do CPORT[$i]=$(free_port); PPORT[$i]=$(free_port); done
CLUSTER="e1=http://127.0.0.1:${PPORT[1]},e2=http://127.0.0.1:${PPORT[2]},e3=http://127.0.0.1:${PPORT[3]}"
echo "== starting a 3-member etcd cluster on loopback ($(etcd --version | head -1))"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://127.0.0.1:${CPORT[$i]}" --advertise-client-urls "http://127.0.0.1:${CPORT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PPORT[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PPORT[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token bench \
    --log-level error >"$WORK/e$i.log" 2>&1 &
  PIDS+=($!)
done
ENDPOINTS="127.0.0.1:${CPORT[1]},127.0.0.1:${CPORT[2]},127.0.0.1:${CPORT[3]}"
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1; then break; fi
  sleep 0.2
done
LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json \
  | python3 -c 'import json,sys; print(next(s["Endpoint"] for s in json.load(sys.stdin) if s["Status"]["leader"]==s["Status"]["header"]["member_id"]))')
echo "   etcd leader: $LEADER"

echo "== etcd: clients $CLIENTS, $EVENTS puts each"
"$BENCH" etcd --endpoint "http://$LEADER" --clients "$CLIENTS" --events "$EVENTS" --json >"$WORK/etcd.json"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

echo "== wasteledger: clients $CLIENTS, $EVENTS signed events each"
"$BENCH" ledger --clients "$CLIENTS" --events "$EVENTS" --json >"$WORK/ledger.json"

python3 - "$WORK/etcd.json" "$WORK/ledger.json" <<'PY'
import json, sys
etcd = {r["clients"]: r for r in json.load(open(sys.argv[1]))["runs"]}
wl = {r["clients"]: r for r in json.load(open(sys.argv[2]))["runs"]}
print()
print(f'{"clients":>7} | {"etcd puts/s":>11} {"p50 ms":>7} {"p99 ms":>7} | {"wasteledger ev/s":>16} {"p50 ms":>7} {"p99 ms":>7} | {"ratio tput":>10} {"ratio p50":>9}')
for c in sorted(etcd):
    e, w = etcd[c], wl.get(c)
    if not w:
        continue
    print(f'{c:>7} | {e["ops_per_sec"]:>11.0f} {e["p50_ms"]:>7.2f} {e["p99_ms"]:>7.2f} | '
          f'{w["ops_per_sec"]:>16.0f} {w["p50_ms"]:>7.2f} {w["p99_ms"]:>7.2f} | '
          f'{w["ops_per_sec"]/e["ops_per_sec"]:>10.2f} {w["p50_ms"]/e["p50_ms"]:>9.2f}')
print("\nratio tput = WasteLedger events/s / etcd puts/s (target >= 1.0 at 64 clients);")
print("ratio p50  = WasteLedger p50 / etcd p50 (target <= 1.5 at 1 client).")
PY
