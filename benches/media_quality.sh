#!/usr/bin/env bash
# Speech quality of the media pipeline: runs `natter media-loopback` on three speech
# recordings (media/testdata/speech.wav and two made with espeak-ng: an American English
# female voice and a German male one, each 20-28 s) under loss and jitter, scores each
# output against its input with
# wideband PESQ (ITU-T P.862.2, the `pesq` package from PyPI) and prints a table with the
# bitrate on the wire (IPv4 + UDP + Natter envelope + media frame) and the receiver's own
# estimate of the whole run (`mos_call`, the E-model of media/src/quality.rs) next to PESQ:
# the calibration check of that estimate (quality::tests::estimate_matches_recorded_pesq).
#
#   benches/media_quality.sh            # the standard conditions, a table per recording and
#                                       # one of the means over the recordings
#   SEEDS="1 2" benches/media_quality.sh   # PESQ averaged over other network seeds (default 1-5)
#   RECORDINGS="a.wav b.wav" benches/media_quality.sh   # other recordings (16 kHz mono)
#
# Needs python3 with venv (a virtual environment with numpy, scipy, soundfile and pesq is
# created in target/pesq-venv, or $PESQ_VENV, on first use), a C compiler for pesq's
# extension and espeak-ng (`apt-get install espeak-ng`) for the generated recordings. Honours CARGO_TARGET_DIR; NATTER=/path/to/natter uses that binary (any program
# with the `media-loopback` subcommand) instead of building natter-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/media-quality
SEEDS=${SEEDS:-"1 2 3 4 5"}
mkdir -p "$OUT"
# VENV, RECORDINGS, pesq_wb, NATTER.
. benches/lib/speech.sh

# name | loopback arguments
CONDITIONS=(
  "clean|--loss 0"
  "5% random|--loss 5"
  "10% random|--loss 10"
  "20% random|--loss 20"
  "20% bursty (mean 3)|--loss 20 --burst 3"
  "40 ms jitter|--jitter-ms 40"
  "5% + 40 ms jitter|--loss 5 --jitter-ms 40"
  "10% + 40 ms jitter|--loss 10 --jitter-ms 40"
  "20% + 40 ms jitter|--loss 20 --jitter-ms 40"
  "20% bursty + 40 ms jitter|--loss 20 --burst 3 --jitter-ms 40"
  "5% bursty|--loss 5 --burst 3"
  "10% bursty|--loss 10 --burst 3"
  "clean, 16 kbit/s|--loss 0 --bitrate 16"
  "clean, 20 kbit/s|--loss 0 --bitrate 20"
  "clean, 24 kbit/s|--loss 0 --bitrate 24"
  "clean, DTX|--loss 0 --dtx"
  "2% concealment only|--loss 2 --no-adapt"
  "5% concealment only|--loss 5 --no-adapt"
  "10% concealment only|--loss 10 --no-adapt"
  "5% bursty, concealed|--loss 5 --burst 3 --no-adapt"
  "10% bursty, concealed|--loss 10 --burst 3 --no-adapt"
)

score() { pesq_wb "$INPUT" "$1"; }

SUMMARY=$OUT/summary.jsonl
: > "$SUMMARY"
for INPUT in $RECORDINGS; do
rec=$(basename "$INPUT" .wav)
echo "== $rec"
printf '%-26s %6s %6s %6s %8s %9s %8s %8s %7s %8s %8s %7s %9s\n' \
  condition PESQ est diff "wire B/s" "wire kb/s" "lost %" "after %" burstR "RED" "FEC" "p95 ms" "JB tgt ms"
for c in "${CONDITIONS[@]}"; do
  name=${c%%|*}
  args=${c#*|}
  scores=(); jsons=()
  for seed in $SEEDS; do
    out="$OUT/$rec-$(printf '%s' "$name" | tr -cs 'a-zA-Z0-9' _)-$seed.wav"
    # shellcheck disable=SC2086
    "$NATTER" media-loopback --input "$INPUT" --output "$out" --seed "$seed" $args > "${out%.wav}.json"
    scores+=("$(score "$out")")
    jsons+=("${out%.wav}.json")
  done
  python3 - "$name" "${scores[*]}" "$SUMMARY" "${jsons[@]}" <<'PY'
import json, sys
name, scores, summary, files = sys.argv[1], [float(x) for x in sys.argv[2].split()], sys.argv[3], sys.argv[4:]
runs = [json.load(open(f)) for f in files]
mean = lambda xs: sum(xs) / len(xs)
pesq = mean(scores)
est = mean([d["mos_call"] for d in runs])
before = mean([d["receiver"]["loss_before_recovery_pct"] for d in runs])
after = mean([d["receiver"]["loss_after_recovery_pct"] for d in runs])
burst = mean([d["burst_ratio_after_recovery"] for d in runs])
wire = mean([d["wire_bytes_per_s"] for d in runs])
p95 = mean([d["latency_ms"]["p95"] for d in runs])
d = runs[-1]
r = d["receiver"]
print(f"{name:<26} {pesq:6.2f} {est:6.2f} {est - pesq:+6.2f} {d['wire_bytes_per_s']:8.0f} "
      f"{d['wire_kbps']:9.1f} {before:8.2f} {after:8.2f} {burst:7.2f} "
      f"{r['red_recovered']:8d} {r['fec_recovered']:8d} {d['latency_ms']['p95']:7.1f} "
      f"{r['target_delay_ms']:9.1f}")
with open(summary, "a") as f:
    f.write(json.dumps({"condition": name, "pesq": pesq, "est": est, "before": before,
                        "after": after, "wire": wire, "p95": p95}) + "\n")
PY
done
done
echo "== mean over the recordings ($RECORDINGS)"
python3 - "$SUMMARY" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
order = list(dict.fromkeys(r["condition"] for r in rows))
print(f"{'condition':<26} {'PESQ':>6} {'est':>6} {'diff':>6} {'wire B/s':>9} {'x clean':>8} "
      f"{'lost %':>7} {'after %':>8} {'p95 ms':>7}")
mean_of = lambda c, k: (lambda rs: sum(r[k] for r in rs) / len(rs))(
    [r for r in rows if r["condition"] == c])
clean = mean_of("clean", "wire") if "clean" in order else float("nan")
for c in order:
    m = lambda k: mean_of(c, k)
    print(f"{c:<26} {m('pesq'):6.2f} {m('est'):6.2f} {m('est') - m('pesq'):+6.2f} "
          f"{m('wire'):9.0f} {m('wire') / clean:8.2f} {m('before'):7.2f} {m('after'):8.2f} "
          f"{m('p95'):7.1f}")
PY
echo "(PESQ, est (the receiver's mos_call), lost %, after % and burstR: mean over seeds $SEEDS; the per-recording tables' other columns: the last seed; the means table: means of everything, x clean: the wire rate over the clean condition's, the ratio the loss budget caps at 1.6. Outputs in $OUT.)"
