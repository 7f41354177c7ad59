#!/bin/bash
# Durable first hops against /healthz with wrk, and the server's CPU time per hop (from /proc), for
# kichhoat or for the bare sled server in examples/bare_sled.rs (BENCHMARKS.md, "What sled allows").
#   bench/ratio.sh kichhoat sled|memory   # 100k phones, each with a stored conversation
#   bench/ratio.sh bare [SPIN_US]         # the bare server; SPIN_US of CPU burnt per hop
# Needs: cargo build --release --bins --examples; wrk (apt-get install wrk).
set -u
cd "$(dirname "$0")/.."
B=./target/release/kichhoat
PORT=18181
case "$1" in
  kichhoat)
    [ -f /tmp/bench-registry.csv ] || $B bench registry 100000 > /tmp/bench-registry.csv
    rm -rf /tmp/bench-data
    KICHHOAT_LOG=warn $B serve --store "$2" --data-dir /tmp/bench-data --registry /tmp/bench-registry.csv \
      --listen 127.0.0.1:$PORT 2>/tmp/bench-serve.log &
    ;;
  bare) ./target/release/examples/bare_sled 127.0.0.1:$PORT "${2:-0}" 2>/tmp/bench-bare.log & ;;
  *) echo "usage: $0 kichhoat sled|memory | bare [SPIN_US]" >&2; exit 2 ;;
esac
P=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.3; done
if [ "$1" = kichhoat ]; then
  # One conversation per phone before the measured run.
  $B bench run --url http://127.0.0.1:$PORT --phones 100000 --prefill 32 --load first:32 --duration 2 --healthz 0 >/dev/null 2>&1
else
  sleep 5 # sled settles after storing the 100k records
fi
cpu() { awk '{print $14+$15}' /proc/$P/stat; }   # utime + stime, in clock ticks (100/s)
run() { # NAME SECONDS WRK-ARGS...
  local name=$1 secs=$2; shift 2
  local t0; t0=$(cpu)
  wrk -t1 -c32 -d${secs}s --latency "$@" > /tmp/bench-wrk.out
  local t1 reqs; t1=$(cpu); reqs=$(grep -oP '^\s+\K\d+(?= requests in)' /tmp/bench-wrk.out)
  echo "$name: $(grep -oP 'Requests/sec:\s+\K\S+' /tmp/bench-wrk.out)/s, p99 $(grep -oP '^\s+99%\s+\K\S+' /tmp/bench-wrk.out)," \
       "server CPU $(( (t1 - t0) * 10000 / reqs )) µs/request ($(( (t1 - t0) / secs ))% of a core)"
}
run "first hops" 12 -s bench/wrk-first-hop.lua http://127.0.0.1:$PORT
run "/healthz" 8 http://127.0.0.1:$PORT/healthz
kill $P; wait $P
