#!/usr/bin/env bash
# Relay benchmark: one relay on loopback carrying N concurrent calls, 50 packets/s each way
# per call, 120-byte payloads. For each N it runs coturn (Debian's TURN server) under its own
# load client, turnutils_uclient, and then our super node under our load program, and prints
# packets relayed per second, CPU, CPU per relayed packet, latency and loss, and the ratio
# "CPU per packet, ours / coturn's" (the goal is below 1).
#
#   benches/relay_load.sh                          # N = 100 500 1000 2000, 10 s windows
#   NATTER_RELAY_CALLS="100 500" NATTER_RELAY_SECS=20 benches/relay_load.sh
#
# Settings (environment):
#   NATTER_RELAY_CALLS    call counts (default "100 500 1000 2000")
#   NATTER_RELAY_SECS     length of the measured steady-state window in seconds (default 10)
#   NATTER_RELAY_ONLY     "coturn" or "natter" to run one half only
#   NATTER_COTURN_MODE    "peer" (default): a call is one TURN allocation talking to a plain
#                         UDP peer (turnutils_peer echoes), so every packet crosses the relay
#                         once, as it does through a super node. "c2c": a call is two
#                         allocations talking to each other (uclient -y); every packet then
#                         crosses two allocations of the same server (twice the work).
#   NATTER_COTURN_PORT    TURN listening port (default 34780; the echo peer uses port + 1)
#   NATTER_UCLIENT_SESSIONS  allocations per turnutils_uclient process (default 250). uclient
#                         spends ~0.1 s per allocation before it sends anything, and is single
#                         threaded, so large N is spread over several processes run at once.
#   NATTER_RELAY_KEEP=1   keep the temporary directory (server logs, uclient output)
#
# Not part of `make test`: it is run by hand. The coturn half needs coturn (turnserver,
# turnutils_uclient, turnutils_peer), awk and, for kernel packet counters, nft and root (without
# them the counts come from uclient's own once-a-second totals). Our half needs cargo and
# python3 or jq to read the load program's JSON line.
#
# Our half is benches/src/bin/relay_load.rs (its header says how it works): one super node on a
# thread of its own, 2N devices on one client thread, 155-byte frames (5-byte relay header and
# a 150-byte inner packet: a 120-byte payload in a media envelope). It counts what the super
# node's relay forwarded and that thread's CPU only. Its UDP socket asks for a 4 MiB receive
# buffer, which the kernel caps at net.core.rmem_max (208 KiB by default: then expect loss
# from about 500 calls whenever the loop is descheduled for a few ms).
# On a shared machine with autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled),
# nice values only weigh threads inside one session: every other session's build gets as much
# CPU as this whole benchmark, both halves lose packets to scheduling rather than to the relay,
# and the numbers say little. Run it from a shell whose autogroup weighs more (as root):
#   echo -10 > /proc/self/autogroup; benches/relay_load.sh
#
# What is measured, per N:
#   relayed pkt/s  packets the relay sent on towards their destination in the window, counted
#                  by nft on the output hook by port and exact UDP length (ChannelData with the
#                  120-byte payload to clients, and the bare payload to the peer), so STUN
#                  refreshes are not counted. Target: 100 per call (50 each way).
#   cpu %          relay process user+system CPU time (all threads, /proc/PID/stat) over the
#                  window, in % of one core.
#   us/pkt         relay CPU microseconds per relayed packet.
#   latency        coturn: uclient only reports an average, min and max, in whole
#                  milliseconds (it stamps packets with a millisecond clock), over the whole run
#                  rather than the window. In peer mode it is the round trip client -> relay ->
#                  peer -> relay -> client; in c2c mode it is one way through two allocations.
#                  The columns say "avg"/"max" for coturn and p50/p99 for ours.
#   loss %         window: 1 - (packets out of the relay) / (packets into the relay), from the
#                  same counters (slightly negative when fewer packets were in flight at the end
#                  of the window than at its start); run: uclient's "Total lost packets" over the
#                  whole run, which also counts drops at the load generator's own sockets.
#   gen cpu %      CPU of the load generators (uclient processes + echo peer) in % of one core,
#                  to tell when the generator rather than the relay is the bottleneck.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${NATTER_RELAY_CALLS:-"100 500 1000 2000"}
SECS=${NATTER_RELAY_SECS:-10}
ONLY=${NATTER_RELAY_ONLY:-}
MODE=${NATTER_COTURN_MODE:-peer}
TURN_PORT=${NATTER_COTURN_PORT:-34780}
PEER_PORT=$((TURN_PORT + 1))
PER_PROC=${NATTER_UCLIENT_SESSIONS:-250}
MIN_PORT=40000 # relay port range, room for 2 x 2000 allocations and more
MAX_PORT=59999
PAYLOAD=120     # bytes of payload per packet
INTERVAL_MS=20  # one packet every 20 ms per direction = 50 packets/s
# uclient starts each session 1 to 6 s after its allocations are done; the window opens after
# all of them send, and every session keeps sending TAIL seconds after the window closes.
WARMUP=7
TAIL=8
CLK_TCK=$(getconf CLK_TCK)

case "$MODE" in peer | c2c) ;; *) echo "NATTER_COTURN_MODE must be peer or c2c" >&2; exit 2 ;; esac

TMP=$(mktemp -d "${TMPDIR:-/tmp}/natter-relay-load.XXXXXX")
NFT_TABLE="natter_relay_load_$$"
USE_NFT=0
PIDS=()

cleanup() {
  local p
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${PIDS[@]+"${PIDS[@]}"}; do wait "$p" 2>/dev/null || true; done
  if [ "$USE_NFT" = 1 ]; then nft delete table inet "$NFT_TABLE" 2>/dev/null || true; fi
  if [ "${NATTER_RELAY_KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[relay_load] $*" >&2; }

# File descriptors: uclient holds one socket per allocation; turnserver about two per
# allocation (the client's connected socket and the relay socket), and uclient makes one extra
# "probe" allocation per session that stays until it expires: up to 3 allocations per call in
# c2c mode. The shell's limit is inherited by both.
max_calls=0
for n in $CALLS; do [ "$n" -gt "$max_calls" ] && max_calls=$n; done
need_fds=$((max_calls * 8 + 1024))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
  hard=$(ulimit -Hn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$need_fds" ]; then
    echo "need $need_fds open files for $max_calls calls, the hard limit is $hard (ulimit -Hn)" >&2
    exit 1
  fi
  ulimit -n "$need_fds"
fi

# user+system CPU ticks of one process (all its threads); 0 once it is gone
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) } # the command name may hold spaces; fields restart after ") "
  awk '{ print $12 + $13 }' <<<"$stat"
}

# whole machine: "busy_ticks total_ticks" (all CPUs, every process, from /proc/stat)
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# UDP datagrams dropped for a full socket receive buffer (whole network namespace)
udp_rcvbuf_errors() { awk '/^Udp:/ { if (h) { print $6; exit } h = 1 }' /proc/net/snmp; }

# "client_in client_out peer_in peer_out" packet counts, read in one listing
nft_counts() {
  nft list counters table inet "$NFT_TABLE" | awk '
    $1 == "counter" { name = $2 }
    $1 == "packets" { n[name] = $2 }
    END { print n["client_in"] + 0, n["client_out"] + 0, n["peer_in"] + 0, n["peer_out"] + 0 }'
}

# Kernel counters for the packets into and out of the relay, by port and exact UDP length:
# ChannelData (4-byte header + payload) between clients and the TURN port, the bare payload
# between the relay ports and the echo peer.
nft_setup() {
  USE_NFT=0
  if [ "$(id -u)" = 0 ] && command -v nft >/dev/null; then
    if nft -f - <<EOF; then USE_NFT=1; fi
table inet $NFT_TABLE {
  counter client_in {}
  counter client_out {}
  counter peer_in {}
  counter peer_out {}
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport $TURN_PORT udp length $((8 + 4 + PAYLOAD)) counter name client_in
    udp sport $TURN_PORT udp length $((8 + 4 + PAYLOAD)) counter name client_out
    udp sport $PEER_PORT udp length $((8 + PAYLOAD)) counter name peer_in
    udp dport $PEER_PORT udp length $((8 + PAYLOAD)) counter name peer_out
  }
}
EOF
  fi
}

# Sum of the latest once-a-second totals of all uclient logs: "sent received"
uclient_totals() {
  local f
  for f in "$@"; do
    awk -F'[=,]' '/msz=/ { s = $4; r = $6 } END { print s + 0, r + 0 }' "$f"
  done | awk '{ s += $1; r += $2 } END { print s + 0, r + 0 }'
}

wait_for_port() { # port
  local i
  for i in $(seq 100); do
    if ss -Hlun "sport = :$1" | grep -q .; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on UDP port $1" >&2
  return 1
}

# ---------------------------------------------------------------------------------------------
# coturn: turnserver + turnutils_uclient (+ turnutils_peer in peer mode)
# Sets ROW to: relayed_pps cpu_pct us_per_pkt lat_avg_ms lat_max_ms loss_window_pct loss_run_pct
# gen_cpu_pct source. (Not run in a $(...) subshell, so that the EXIT trap sees its processes.)
ROW=""
# stop the given processes, reap them, and drop the nft counters
stop_procs() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  PIDS=() # callers pass every process they started
  if [ "$USE_NFT" = 1 ]; then nft delete table inet "$NFT_TABLE" 2>/dev/null || true; USE_NFT=0; fi
}

coturn_run() {
  local calls=$1 attempt
  for attempt in 1 2 3; do
    coturn_attempt "$calls" "$TMP/coturn-$calls-$attempt" && return 0
    log "coturn: attempt $attempt for $calls calls failed, starting over"
  done
  echo "coturn: $calls calls failed three times; logs in $TMP" >&2
  NATTER_RELAY_KEEP=1
  exit 1
}

coturn_attempt() {
  local calls=$1 dir=$2
  mkdir -p "$dir"
  local per_call=1
  [ "$MODE" = c2c ] && per_call=2
  local sessions=$((calls * per_call))
  local procs=$(((sessions + PER_PROC - 1) / PER_PROC))
  local msgs=$(((WARMUP + SECS + TAIL) * 1000 / INTERVAL_MS))

  turnserver -n --no-tls --no-dtls --no-cli \
    --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$TURN_PORT" \
    --min-port="$MIN_PORT" --max-port="$MAX_PORT" \
    --lt-cred-mech --user=u:p --realm=natter --allow-loopback-peers \
    --max-bps=0 --bps-capacity=0 --user-quota=0 --total-quota=0 \
    --userdb="$dir/turndb" --pidfile="$dir/turnserver.pid" \
    --log-file="$dir/turnserver.log" --simple-log --no-stdout-log \
    >"$dir/turnserver.out" 2>&1 &
  local ts=$!
  PIDS+=("$ts")
  local peer=""
  if [ "$MODE" = peer ]; then
    turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >"$dir/peer.out" 2>&1 &
    peer=$!
    PIDS+=("$peer")
    wait_for_port "$PEER_PORT"
  fi
  wait_for_port "$TURN_PORT"
  nft_setup

  # uclient flags: -c no RTCP allocation (one allocation per session), -l payload bytes,
  # -z send interval ms, -n packets per session, -m sessions, -u/-w credentials, -p port;
  # peer mode: -e/-r the peer each allocation sends to; c2c: -y sessions pair up and talk.
  # -L: each process sends from its own loopback address. uclient first makes a "probe"
  # allocation per session and closes its socket without freeing it; when another socket
  # later gets the same port, the server answers 437 and uclient waits 1 s and retries.
  # Separate source addresses keep processes from stepping on each other's leftovers.
  # uclient also binds two random channel numbers per allocation (the first to peer port + 1)
  # and exits when they collide (about 1 in 16384 allocations): then the whole N is retried.
  local mode_args=(-e 127.0.0.1 -r "$PEER_PORT")
  [ "$MODE" = c2c ] && mode_args=(-y)
  local i left=$calls uclients=() logs=()
  for ((i = 0; i < procs; i++)); do
    local c=$(((left + procs - i - 1) / (procs - i))) # calls spread evenly over the processes
    left=$((left - c))
    turnutils_uclient -c "${mode_args[@]}" -l "$PAYLOAD" -z "$INTERVAL_MS" -n "$msgs" \
      -m $((c * per_call)) -u u -w p -L "127.0.$((i / 200 + 1)).$((i % 200 + 10))" \
      -p "$TURN_PORT" 127.0.0.1 >"$dir/uclient-$i.log" 2>&1 &
    uclients+=($!)
    PIDS+=($!)
    logs+=("$dir/uclient-$i.log")
  done
  log "coturn ($MODE): $calls calls, $sessions allocations in $procs uclient process(es), $msgs packets per allocation"

  # allocations: ~0.1 s each per process before anything is sent
  local deadline=$((SECONDS + sessions / procs / 5 + 120)) ready
  while :; do
    ready=0
    for i in "${!logs[@]}"; do
      if grep -qs "Total connect time" "${logs[$i]}"; then
        ready=$((ready + 1))
      elif ! kill -0 "${uclients[$i]}" 2>/dev/null; then
        log "turnutils_uclient exited before it connected: $(grep -v 'msz=' "${logs[$i]}" | tail -1)"
        stop_procs "${uclients[@]}" "$ts" $peer
        return 1
      fi
    done
    [ "$ready" = "$procs" ] && break
    if [ "$SECONDS" -gt "$deadline" ]; then
      log "uclient did not finish its allocations in time ($ready/$procs processes)"
      stop_procs "${uclients[@]}" "$ts" $peer
      return 1
    fi
    sleep 0.2
  done
  log "allocations done; steady state in ${WARMUP} s, then a ${SECS} s window"
  sleep "$WARMUP"

  local t0 t1 ts0 ts1 gen0=0 gen1=0 pe0=0 pe1=0 m0 m1 rb0 rb1 p
  local ci0=0 co0=0 pi0=0 po0=0 ci1=0 co1=0 pi1=0 po1=0 u0 u1
  t0=$(date +%s.%N)
  ts0=$(cpu_ticks "$ts")
  for p in "${uclients[@]}"; do gen0=$((gen0 + $(cpu_ticks "$p"))); done
  [ -n "$peer" ] && pe0=$(cpu_ticks "$peer")
  m0=$(machine_ticks) rb0=$(udp_rcvbuf_errors)
  if [ "$USE_NFT" = 1 ]; then
    read -r ci0 co0 pi0 po0 <<<"$(nft_counts)"
  fi
  u0=$(uclient_totals "${logs[@]}")
  sleep "$SECS"
  t1=$(date +%s.%N)
  ts1=$(cpu_ticks "$ts")
  for p in "${uclients[@]}"; do gen1=$((gen1 + $(cpu_ticks "$p"))); done
  [ -n "$peer" ] && pe1=$(cpu_ticks "$peer")
  m1=$(machine_ticks) rb1=$(udp_rcvbuf_errors)
  if [ "$USE_NFT" = 1 ]; then
    read -r ci1 co1 pi1 po1 <<<"$(nft_counts)"
  fi
  u1=$(uclient_totals "${logs[@]}")
  # where the time went, to tell a saturated generator or machine from a saturated relay
  awk -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v ts="$((ts1 - ts0))" -v uc="$((gen1 - gen0))" \
    -v pe="$((pe1 - pe0))" -v m0="$m0" -v m1="$m1" -v rb="$((rb1 - rb0))" -v nft="$USE_NFT" \
    -v ci="$((ci1 - ci0))" -v co="$((co1 - co0))" -v pi="$((pi1 - pi0))" -v po="$((po1 - po0))" 'BEGIN {
      dt = t1 - t0; split(m0, a, " "); split(m1, b, " ")
      printf "[relay_load] window %.1f s: CPU %% of one core: turnserver %.1f, uclient %.1f, peer %.1f; machine busy %.0f%% of all CPUs (everything running); UDP receive-buffer drops %d", dt, 100 * ts / hz / dt, 100 * uc / hz / dt, 100 * pe / hz / dt, 100 * (b[1] - a[1]) / (b[2] - a[2]), rb
      if (nft) printf "; per s: clients->relay %.0f, relay->peer %.0f, peer->relay %.0f, relay->clients %.0f", ci / dt, po / dt, pi / dt, co / dt
      printf "\n"
    }' >&2
  if grep -l "start_mclient: tot_send_msgs" "${logs[@]}" >/dev/null; then
    log "WARNING: a uclient process finished sending inside the window; raise TAIL"
  fi

  # let uclient finish (it prints latency and loss only at the end)
  local counted_by_nft=$USE_NFT # stop_procs clears USE_NFT
  deadline=$((SECONDS + TAIL + 60))
  for p in "${uclients[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
  done
  stop_procs "${uclients[@]}" "$ts" $peer

  local run
  run=$(cat "${logs[@]}" | awk '
    /start_mclient: tot_send_msgs=/ { split($0, a, /[=,]/); sent += a[2]; recv += a[4]; last = a[4] }
    /Total lost packets/ { for (i = 1; i <= NF; i++) if ($i == "packets") lost += $(i + 1) }
    /Average round trip delay/ { lat += $7 * last; if ($NF == "ms" && $(NF - 1) + 0 > max) max = $(NF - 1) + 0; n += last }
    END { printf "%.3f %d %.3f\n", (n ? lat / n : -1), max, (sent ? 100 * lost / sent : -1) }')
  read -r lat_avg lat_max loss_run <<<"$run"

  ROW=$(awk -v t0="$t0" -v t1="$t1" -v ts="$((ts1 - ts0))" -v gen="$((gen1 - gen0 + pe1 - pe0))" -v hz="$CLK_TCK" \
    -v nft="$counted_by_nft" -v mode="$MODE" -v u0="$u0" -v u1="$u1" \
    -v ci="$((ci1 - ci0))" -v co="$((co1 - co0))" -v pi="$((pi1 - pi0))" -v po="$((po1 - po0))" \
    -v lat_avg="$lat_avg" -v lat_max="$lat_max" -v loss_run="$loss_run" 'BEGIN {
      dt = t1 - t0
      if (nft) {
        out = co + (mode == "peer" ? po : 0); inn = ci + (mode == "peer" ? pi : 0); src = "nft"
      } else {
        # uclient totals: sent legs are counted as relayed (peer mode), received legs as delivered
        split(u0, a, " "); split(u1, b, " "); s = b[1] - a[1]; r = b[2] - a[2]
        out = r + (mode == "peer" ? s : 0); inn = s + (mode == "peer" ? s : 0); src = "uclient"
      }
      cpu = ts / hz
      printf "%.0f %.1f %.2f %s %s %.3f %s %.1f %s\n", out / dt, 100 * cpu / dt, (out ? 1e6 * cpu / out : 0),
        lat_avg, lat_max, (inn ? 100 * (1 - out / inn) : 0), loss_run, 100 * gen / hz / dt, src
    }')
}

# ---------------------------------------------------------------------------------------------
# ====== OUR HALF: natter_run N =====================================================================
# Runs our super node under our load program for N calls and prints its one JSON line:
#   {"calls": N, "packets_per_sec": relayed packets per second, "cpu_seconds": super node CPU
#    (user+system) over the window, "p50_ms": ..., "p99_ms": added latency, "loss": fraction 0..1}
# (an optional "secs" field overrides NATTER_RELAY_SECS as the window length). Until the load
# program exists it prints "not yet".
natter_run() {
  local calls=$1
  if ! grep -q 'name = "relay_load"' benches/Cargo.toml 2>/dev/null &&
    [ ! -f benches/src/bin/relay_load.rs ]; then
    echo "not yet"
    return 0
  fi
  cargo run --release --quiet -p natter-benches --bin relay_load -- --calls "$calls" --secs "$SECS" --json |
    grep '^{' | tail -1
}

# JSON line -> "calls pps cpu_seconds p50 p99 loss secs"
parse_natter_json() {
  if command -v python3 >/dev/null; then
    python3 -c 'import json, sys
d = json.loads(sys.argv[1])
print(d["calls"], d["packets_per_sec"], d["cpu_seconds"], d["p50_ms"], d["p99_ms"], d["loss"], d.get("secs", sys.argv[2]))' "$1" "$SECS"
  elif command -v jq >/dev/null; then
    jq -r --arg secs "$SECS" '"\(.calls) \(.packets_per_sec) \(.cpu_seconds) \(.p50_ms) \(.p99_ms) \(.loss) \(.secs // $secs)"' <<<"$1"
  else
    echo "reading our JSON needs python3 or jq" >&2
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
if [ "$ONLY" != natter ]; then
  for tool in turnserver turnutils_uclient turnutils_peer; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install coturn)" >&2; exit 1; }
  done
fi
if [ "$ONLY" != coturn ] && grep -q 'name = "relay_load"' benches/Cargo.toml 2>/dev/null; then
  cargo build --release --quiet -p natter-benches --bin relay_load
fi

echo "relay benchmark: ${SECS} s windows, ${PAYLOAD}-byte payloads, $((1000 / INTERVAL_MS)) packets/s each way per call; coturn mode: $MODE; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
fmt='%-7s %6s %9s %9s %6s %8s %9s %9s %8s %8s %7s %10s\n'
# shellcheck disable=SC2059
printf "$fmt" relay calls target/s relayed/s "cpu %" "us/pkt" "lat ms" "lat ms" "loss %" "loss %" "gen %" "us/pkt"
# shellcheck disable=SC2059
printf "$fmt" "" "" "" "" "1 core" "CPU" "p50|avg" "p99|max" window run "cpu" "ours/cot."
for n in $CALLS; do
  coturn_us=""
  if [ "$ONLY" != natter ]; then
    coturn_run "$n"
    read -r pps cpu us lat_avg lat_max loss_w loss_r gen src <<<"$ROW"
    coturn_us=$us
    # shellcheck disable=SC2059
    printf "$fmt" coturn "$n" $((n * 2 * 1000 / INTERVAL_MS)) "$pps" "$cpu" "$us" "avg $lat_avg" "max $lat_max" "$loss_w" "$loss_r" "$gen" "-"
    [ "$src" = nft ] || log "coturn packet counts from uclient's totals (nft needs root)"
  fi
  if [ "$ONLY" != coturn ]; then
    json=$(natter_run "$n")
    if [ "$json" = "not yet" ]; then
      # shellcheck disable=SC2059
      printf "$fmt" natter "$n" $((n * 2 * 1000 / INTERVAL_MS)) "not yet" "" "" "" "" "" "" "" ""
    else
      if [[ $json != "{"* ]]; then
        echo "relay_load printed no JSON line for $n calls" >&2
        exit 1
      fi
      fields=$(parse_natter_json "$json")
      read -r _ pps cpu_s p50 p99 loss secs <<<"$fields"
      read -r cpu us lossp ratio <<<"$(awk -v pps="$pps" -v c="$cpu_s" -v s="$secs" -v l="$loss" -v cot="$coturn_us" 'BEGIN {
        us = (pps > 0 ? 1e6 * c / (pps * s) : 0)
        printf "%.1f %.2f %.3f %s\n", 100 * c / s, us, 100 * l, (cot != "" && cot > 0 ? sprintf("%.2f", us / cot) : "-")
      }')"
      # shellcheck disable=SC2059
      printf "$fmt" natter "$n" $((n * 2 * 1000 / INTERVAL_MS)) "$pps" "$cpu" "$us" "$p50" "$p99" "$lossp" "-" "-" "$ratio"
    fi
  fi
done
if [ "$MODE" = peer ]; then what="round trip client -> relay -> echo peer -> relay -> client"; else what="one way through two allocations"; fi
echo "coturn latency: uclient's average and maximum over the whole run in whole milliseconds, $what; ours: p50/p99 added latency. Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
