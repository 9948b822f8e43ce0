#!/usr/bin/env bash
# Speech quality of the media pipeline: runs `natter media-loopback` on
# media/testdata/speech.wav under loss and jitter, scores each output against the input with
# wideband PESQ (ITU-T P.862.2, the `pesq` package from PyPI) and prints a table with the
# bitrate on the wire (IPv4 + UDP + Natter envelope + media frame).
#
#   benches/media_quality.sh            # the standard conditions
#   SEEDS="1 2" benches/media_quality.sh   # PESQ averaged over other network seeds (default 1-5)
#
# Needs python3 with venv (a virtual environment with numpy, scipy, soundfile and pesq is
# created in target/pesq-venv on first use) and a C compiler for pesq's extension.
set -euo pipefail
cd "$(dirname "$0")/.."

INPUT=media/testdata/speech.wav
OUT=target/media-quality
VENV=target/pesq-venv
SEEDS=${SEEDS:-"1 2 3 4 5"}
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pesq, soundfile, numpy, scipy' 2>/dev/null; then
  echo "Installing pesq, numpy, scipy, soundfile into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet numpy scipy soundfile pesq >&2
fi

cargo build --release --quiet -p natter-cli
NATTER=target/release/natter

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

printf '%-22s %6s %8s %9s %8s %8s %8s %8s %7s %9s\n' \
  condition PESQ "wire B/s" "wire kb/s" "lost %" "after %" "RED" "FEC" "p95 ms" "JB tgt ms"
for c in "${CONDITIONS[@]}"; do
  name=${c%%|*}
  args=${c#*|}
  total=0; n=0; json=""
  for seed in $SEEDS; do
    out="$OUT/$(printf '%s' "$name" | tr -cs 'a-zA-Z0-9' _)-$seed.wav"
    # shellcheck disable=SC2086
    json=$("$NATTER" media-loopback --input "$INPUT" --output "$out" --seed "$seed" $args)
    echo "$json" > "${out%.wav}.json"
    p=$(score "$out")
    total=$(python3 -c "print($total + $p)")
    n=$((n + 1))
  done
  python3 - "$name" "$(python3 -c "print($total / $n)")" "$json" <<'PY'
import json, sys
name, pesq, d = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
r = d["receiver"]
print(f"{name:<22} {pesq:6.2f} {d['wire_bytes_per_s']:8.0f} {d['wire_kbps']:9.1f} "
      f"{r['loss_before_recovery_pct']:8.1f} {r['loss_after_recovery_pct']:8.2f} "
      f"{r['red_recovered']:8d} {r['fec_recovered']:8d} {d['latency_ms']['p95']:7.1f} "
      f"{r['target_delay_ms']:9.1f}")
PY
done
echo "(PESQ: mean over seeds $SEEDS; the other columns: the last seed. Outputs in $OUT.)"
