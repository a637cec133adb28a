#!/usr/bin/env bash
# WasteLedger side by side with etcd on this machine, interleaved so machine drift cancels out.
#
# Installs etcd from the distribution's packages (etcd-server) if it is missing. Each round
# starts a fresh 3-member etcd cluster on loopback with its default fsync behaviour and drives
# it with puts of ~512-byte values, and starts a fresh 3-node WasteLedger cluster (fsync on,
# production settings) and drives it with signed manifest lifecycles, at the same concurrency
# levels through the same client code (crates/bench). Rounds alternate which system goes
# first. Prints every round, then per level the medians and the median of the per-round
# ratios WasteLedger / etcd: a shared machine's speed drifts by tens of percent within minutes,
# and a ratio taken within one round, then the median over rounds, is what survives that.
#
#   bench/compare-etcd.sh [CLIENTS] [EVENTS] [ROUNDS]      e.g. bench/compare-etcd.sh 1,16,64 5000 3
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${1:-1,16,64}"
EVENTS="${2:-5000}"
ROUNDS="${3:-3}"

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

# Round $1: a fresh etcd cluster, the puts, then the cluster stopped.
run_etcd() {
  local round=$1 i
  local -a cport pport
  for i in 1 2 3; do cport[$i]=$(free_port); pport[$i]=$(free_port); done
  local cluster="e1=http://127.0.0.1:${pport[1]},e2=http://127.0.0.1:${pport[2]},e3=http://127.0.0.1:${pport[3]}"
  echo "== round $round: etcd ($(etcd --version | head -1)), clients $CLIENTS, $EVENTS puts each"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/r$round-e$i" \
      --listen-client-urls "http://127.0.0.1:${cport[$i]}" --advertise-client-urls "http://127.0.0.1:${cport[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${pport[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pport[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$round" \
      --log-level error >"$WORK/r$round-e$i.log" 2>&1 &
    PIDS+=($!)
  done
  local endpoints="127.0.0.1:${cport[1]},127.0.0.1:${cport[2]},127.0.0.1:${cport[3]}"
  local healthy=""
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then healthy=1; break; fi
    sleep 0.2
  done
  if [ -z "$healthy" ]; then
    echo "etcd did not become healthy within 20 s; its logs:" >&2
    tail -n 20 "$WORK"/r"$round"-e*.log >&2
    exit 1
  fi
  local leader
  leader=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json \
    | python3 -c 'import json,sys; print(next(s["Endpoint"] for s in json.load(sys.stdin) if s["Status"]["leader"]==s["Status"]["header"]["member_id"]))')
  "$BENCH" etcd --endpoint "http://$leader" --clients "$CLIENTS" --events "$EVENTS" --json >"$WORK/etcd-$round.json"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  rm -rf "$WORK"/r"$round"-e?
}

# Round $1: a fresh WasteLedger cluster (the load generator starts and stops it).
run_ledger() {
  echo "== round $1: wasteledger, clients $CLIENTS, $EVENTS signed events each"
  "$BENCH" ledger --clients "$CLIENTS" --events "$EVENTS" --json >"$WORK/ledger-$1.json"
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run_etcd "$round"; run_ledger "$round"
  else
    run_ledger "$round"; run_etcd "$round"
  fi
done

python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def load(name, r):
    return {x["clients"]: x for x in json.load(open(f"{work}/{name}-{r}.json"))["runs"]}
per_round = [(load("etcd", r), load("ledger", r)) for r in range(1, rounds + 1)]
levels = sorted(set(per_round[0][0]) & set(per_round[0][1]))
head = (f'{"round":>5} {"clients":>7} | {"etcd puts/s":>11} {"p50 ms":>7} {"p99 ms":>7} | '
        f'{"wasteledger ev/s":>16} {"p50 ms":>7} {"p99 ms":>7} | {"ratio tput":>10} {"ratio p50":>9}')
print()
print(head)
ratios = {c: [] for c in levels}
for r, (etcd, wl) in enumerate(per_round, 1):
    for c in levels:
        e, w = etcd[c], wl[c]
        rt, rp = w["ops_per_sec"] / e["ops_per_sec"], w["p50_ms"] / e["p50_ms"]
        ratios[c].append((rt, rp, e, w))
        print(f'{r:>5} {c:>7} | {e["ops_per_sec"]:>11.0f} {e["p50_ms"]:>7.2f} {e["p99_ms"]:>7.2f} | '
              f'{w["ops_per_sec"]:>16.0f} {w["p50_ms"]:>7.2f} {w["p99_ms"]:>7.2f} | {rt:>10.2f} {rp:>9.2f}')
med = statistics.median
print(f'\nmedians over {rounds} round(s):')
print(head.replace("round", "     ", 1))
for c in levels:
    rs = ratios[c]
    m = lambda sysidx, key: med(x[sysidx][key] for x in rs)
    lo, hi = min(x[0] for x in rs), max(x[0] for x in rs)
    print(f'{"":>5} {c:>7} | {m(2, "ops_per_sec"):>11.0f} {m(2, "p50_ms"):>7.2f} {m(2, "p99_ms"):>7.2f} | '
          f'{m(3, "ops_per_sec"):>16.0f} {m(3, "p50_ms"):>7.2f} {m(3, "p99_ms"):>7.2f} | '
          f'{med(x[0] for x in rs):>10.2f} {med(x[1] for x in rs):>9.2f}   (tput ratio {lo:.2f}..{hi:.2f})')
print("\nratio tput = WasteLedger events/s / etcd puts/s in the same round (target >= 1.0 at 64 clients);")
print("ratio p50  = WasteLedger p50 / etcd p50 in the same round (target <= 1.5 at 1 client);")
print("the median row gives each column's median over the rounds, and the median of the per-round ratios.")
PY
