#!/usr/bin/env bash
# Speech quality of the media pipeline: runs `natter media-loopback` on
# media/testdata/speech.wav under loss and jitter, scores each output against the input with
# wideband PESQ (ITU-T P.862.2, the `pesq` package from PyPI) and prints a table with the
# bitrate on the wire (IPv4 + UDP + Natter envelope + media frame) and the receiver's own
# estimate of the whole run (`mos_call`, the E-model of media/src/quality.rs) next to PESQ:
# the calibration check of that estimate (quality::tests::estimate_matches_recorded_pesq).
#
#   benches/media_quality.sh            # the standard conditions
#   SEEDS="1 2" benches/media_quality.sh   # PESQ averaged over other network seeds (default 1-5)
#
# Needs python3 with venv (a virtual environment with numpy, scipy, soundfile and pesq is
# created in target/pesq-venv, or $PESQ_VENV, on first use) and a C compiler for pesq's
# extension. Honours CARGO_TARGET_DIR; NATTER=/path/to/natter uses that binary (any program
# with the `media-loopback` subcommand) instead of building natter-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

INPUT=media/testdata/speech.wav
OUT=target/media-quality
VENV=${PESQ_VENV:-target/pesq-venv}
SEEDS=${SEEDS:-"1 2 3 4 5"}
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pesq, soundfile, numpy, scipy' 2>/dev/null; then
  echo "Installing pesq, numpy, scipy, soundfile into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet numpy scipy soundfile pesq >&2
fi

if [ -z "${NATTER:-}" ]; then
  cargo build --release --quiet -p natter-cli
  NATTER=${CARGO_TARGET_DIR:-target}/release/natter
fi

# name | loopback arguments
CONDITIONS=(
  "clean|--loss 0"
  "5% random|--loss 5"
  "10% random|--loss 10"
  "20% random|--loss 20"
  "20% bursty (mean 3)|--loss 20 --burst 3"
  "40 ms jitter|--jitter-ms 40"
  "5% + 40 ms jitter|--loss 5 --jitter-ms 40"
  "clean, 20 kbit/s|--loss 0 --bitrate 20"
  "clean, DTX|--loss 0 --dtx"
  "2% concealment only|--loss 2 --no-adapt"
  "5% concealment only|--loss 5 --no-adapt"
  "10% concealment only|--loss 10 --no-adapt"
  "5% bursty, concealed|--loss 5 --burst 3 --no-adapt"
  "10% bursty, concealed|--loss 10 --burst 3 --no-adapt"
)

score() {
  "$VENV/bin/python" - "$INPUT" "$1" <<'PY'
import sys
import numpy as np
import soundfile as sf
from pesq import pesq
ref, fs = sf.read(sys.argv[1], dtype="int16")
deg, fs2 = sf.read(sys.argv[2], dtype="int16")
assert fs == fs2 == 16000, (fs, fs2)
n = min(len(ref), len(deg))
print(f"{pesq(fs, ref[:n].astype(np.float64), deg[:n].astype(np.float64), 'wb'):.3f}")
PY
}

printf '%-22s %6s %6s %6s %8s %9s %8s %8s %7s %8s %8s %7s %9s\n' \
  condition PESQ est diff "wire B/s" "wire kb/s" "lost %" "after %" burstR "RED" "FEC" "p95 ms" "JB tgt ms"
for c in "${CONDITIONS[@]}"; do
  name=${c%%|*}
  args=${c#*|}
  scores=(); jsons=()
  for seed in $SEEDS; do
    out="$OUT/$(printf '%s' "$name" | tr -cs 'a-zA-Z0-9' _)-$seed.wav"
    # shellcheck disable=SC2086
    "$NATTER" media-loopback --input "$INPUT" --output "$out" --seed "$seed" $args > "${out%.wav}.json"
    scores+=("$(score "$out")")
    jsons+=("${out%.wav}.json")
  done
  python3 - "$name" "${scores[*]}" "${jsons[@]}" <<'PY'
import json, sys
name, scores, files = sys.argv[1], [float(x) for x in sys.argv[2].split()], sys.argv[3:]
runs = [json.load(open(f)) for f in files]
mean = lambda xs: sum(xs) / len(xs)
pesq = mean(scores)
est = mean([d["mos_call"] for d in runs])
before = mean([d["receiver"]["loss_before_recovery_pct"] for d in runs])
after = mean([d["receiver"]["loss_after_recovery_pct"] for d in runs])
burst = mean([d["burst_ratio_after_recovery"] for d in runs])
d = runs[-1]
r = d["receiver"]
print(f"{name:<22} {pesq:6.2f} {est:6.2f} {est - pesq:+6.2f} {d['wire_bytes_per_s']:8.0f} "
      f"{d['wire_kbps']:9.1f} {before:8.2f} {after:8.2f} {burst:7.2f} "
      f"{r['red_recovered']:8d} {r['fec_recovered']:8d} {d['latency_ms']['p95']:7.1f} "
      f"{r['target_delay_ms']:9.1f}")
PY
done
echo "(PESQ, est (the receiver's mos_call), lost %, after % and burstR: mean over seeds $SEEDS; the other columns: the last seed. Outputs in $OUT.)"
