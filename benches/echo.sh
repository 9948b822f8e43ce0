#!/usr/bin/env bash
# Echo cancellation, noise suppression and gain control (media/src/audio/processing.rs, the
# WebRTC audio processing module's pure-Rust port `sonora`), measured with `natter
# media-echo`: each recording of benches/media_quality.sh is played into a synthetic room
# (100 ms of delay, 300 ms of reverberation, as much energy in the tail as in the direct
# path, the echo 10 dB under what is played; media/src/audio/synth.rs `Room`) and its echo
# goes through the processing.
#
# - Single talk (only the far end speaks): echo return loss enhancement (ERLE) per 500 ms
#   (at most 60 dB: beyond that an almost silent output says how loud the echo was),
#   when it first reaches 25 dB and from when it stays there, its median and 10th percentile
#   after the first second; for echo cancellation alone and for the whole chain (whose gain
#   control raises what is left of the echo along with everything else).
# - Double talk (the next recording speaks at the near end over the echo, from 5 s on: the
#   canceller has heard the far end alone until then, as in a conversation): wideband PESQ
#   of what is sent while the near end speaks, against the clean near end, for the
#   unprocessed microphone, echo cancellation alone and the whole chain; and of the near end
#   through the whole chain without any far end (what the processing costs clean speech).
#   The recordings are speech without long pauses, so this is double talk for 15-20 s on
#   end: far harder than a conversation, where a few percent of the time is double talk.
# - CPU: the processing's time per 10 ms of audio, next to the Opus encoder's (default
#   settings) on the same audio, measured in the same run.
# - The reference: Google's C++ audio processing module (libwebrtc-audio-processing 2.x,
#   through the `aec-audio-processing` package from PyPI, built into the venv on first use;
#   benches/lib/webrtc_apm.py) on the same signals: the "ref" columns. Set NO_REFERENCE=1 to
#   skip it.
#
#   benches/echo.sh                        # the table
#   ROOM="--rt60 0.5 --drr-db=-3" benches/echo.sh   # another room (natter media-echo --help)
#
# Needs what benches/media_quality.sh needs (python3 with venv, espeak-ng).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/echo
mkdir -p "$OUT"
# VENV, RECORDINGS, pesq_wb, NATTER.
. benches/lib/speech.sh
ROOM=${ROOM:-}
REF=
if [ -z "${NO_REFERENCE:-}" ]; then
  if ! "$VENV/bin/python" -c 'import aec_audio_processing' 2> /dev/null; then
    echo "Building the reference (aec-audio-processing) into $VENV ..." >&2
    "$VENV/bin/pip" install --quiet aec-audio-processing >&2 || echo "no reference: install failed" >&2
  fi
  "$VENV/bin/python" -c 'import aec_audio_processing' 2> /dev/null && REF=1
fi
reference() { # FAR MIC OUT MODE
  "$VENV/bin/python" benches/lib/webrtc_apm.py "$@"
}

read -r -a recs <<< "$RECORDINGS"
n=${#recs[@]}
SUMMARY=$OUT/summary.jsonl
: > "$SUMMARY"
for i in "${!recs[@]}"; do
  far=${recs[$i]}
  near=${recs[$(( (i + 1) % n ))]}
  name=$(basename "$far" .wav)
  # shellcheck disable=SC2086
  {
    "$NATTER" media-echo --far "$far" --stages echo $ROOM --mic "$OUT/$name-single-mic.wav" \
      --output "$OUT/$name-single-aec.wav" > "$OUT/$name-single-aec.json"
    "$NATTER" media-echo --far "$far" $ROOM > "$OUT/$name-single-all.json"
    "$NATTER" media-echo --far "$far" --near "$near" --near-start 5 --stages echo $ROOM \
      --mic "$OUT/$name-double-mic.wav" --output "$OUT/$name-double-aec.wav" > "$OUT/$name-double-aec.json"
    "$NATTER" media-echo --far "$far" --near "$near" --near-start 5 $ROOM \
      --output "$OUT/$name-double-all.wav" > "$OUT/$name-double-all.json"
    # The near end alone through the whole chain: a silent far end as long as the near end.
    "$VENV/bin/python" -c 'import sys, soundfile as sf, numpy as np; x, fs = sf.read(sys.argv[1], dtype="int16"); sf.write(sys.argv[2], np.zeros_like(x), fs, subtype="PCM_16")' "$near" "$OUT/silence.wav"
    "$NATTER" media-echo --far "$OUT/silence.wav" --near "$near" $ROOM \
      --output "$OUT/$name-near-all.wav" > /dev/null
  }
  ref_aec=null ref_all=null
  if [ -n "$REF" ]; then
    reference "$far" "$OUT/$name-single-mic.wav" "$OUT/$name-single-ref.wav" echo
    reference "$far" "$OUT/$name-double-mic.wav" "$OUT/$name-double-ref.wav" echo
    reference "$far" "$OUT/$name-double-mic.wav" "$OUT/$name-double-ref-all.wav" all
    ref_aec=$(pesq_wb "$near" "$OUT/$name-double-ref.wav" 5)
    ref_all=$(pesq_wb "$near" "$OUT/$name-double-ref-all.wav" 5)
  fi
  mic=$(pesq_wb "$near" "$OUT/$name-double-mic.wav" 5)
  aec=$(pesq_wb "$near" "$OUT/$name-double-aec.wav" 5)
  all=$(pesq_wb "$near" "$OUT/$name-double-all.wav" 5)
  clean=$(pesq_wb "$near" "$OUT/$name-near-all.wav")
  "$VENV/bin/python" - "$name" "$(basename "$near" .wav)" "$mic" "$aec" "$all" "$clean" "$OUT" "$SUMMARY" "$ref_aec" "$ref_all" <<'PY'
import json, math, os, sys
import numpy as np
import soundfile as sf
name, near, mic, aec, allp, clean, out, summary, ref_aec, ref_all = sys.argv[1:]
row = {"far": name, "near": near, "pesq_mic": float(mic), "pesq_aec": float(aec),
       "pesq_all": float(allp), "pesq_near_only": float(clean),
       "pesq_ref_aec": json.loads(ref_aec), "pesq_ref_all": json.loads(ref_all)}

def erle(echo_file, out_file):
    """The same curve as media/src/echo.rs: 500 ms windows, echo within 30 dB of its loudest,
    at most 60 dB (ERLE_CAP_DB)."""
    e, _ = sf.read(echo_file, dtype="int16")
    o, _ = sf.read(out_file, dtype="int16")
    w = 8000
    en = lambda x: float(np.sum(x.astype(np.float64) ** 2))
    wins = [(i / 16000, en(e[i:i + w]), en(o[i:i + w])) for i in range(0, min(len(e), len(o)) - w + 1, w)]
    loud = max(x[1] for x in wins)
    return [(t, min(60.0, 10 * math.log10(a / max(b, 1.0)))) for t, a, b in wins if a > loud * 1e-3]

ref = f"{out}/{name}-single-ref.wav"
if os.path.exists(ref) and ref_aec != "null":
    curve = erle(f"{out}/{name}-single-mic.wav", ref)
    after = sorted(db for t, db in curve if t >= 1.0)
    first = next((t for t, db in curve if db >= 25), None)
    below = [i for i, (t, db) in enumerate(curve) if db < 25]
    steady = curve[0][0] if not below else (curve[below[-1] + 1][0] if below[-1] + 1 < len(curve) else None)
    row["ref"] = {"first_25db_s": first, "steady_25db_from_s": steady,
                  "erle_median_after_1s_db": after[len(after) // 2],
                  "erle_p10_after_1s_db": after[round((len(after) - 1) * 0.1)],
                  "cpu_us_per_10ms": None, "opus_us_per_10ms": None, "cpu_vs_opus": None,
                  "erle_db": curve}
for k in ("aec", "all"):
    d = json.load(open(f"{out}/{name}-single-{k}.json"))
    row[k] = {f: d[f] for f in ("first_25db_s", "steady_25db_from_s", "erle_median_after_1s_db",
                                 "erle_p10_after_1s_db", "cpu_us_per_10ms", "opus_us_per_10ms",
                                 "cpu_vs_opus", "erle_db")}
open(summary, "a").write(json.dumps(row) + "\n")
PY
done

python3 - "$SUMMARY" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
fmt = lambda v, spec=".1f": "-" if v is None else format(v, spec)
num = lambda v, w, spec: ("-" if v is None else format(v, spec)).rjust(w)
print("Single talk: ERLE (dB) per 500 ms window while the far end speaks")
print(f"{'far end':<14} {'stages':<9} {'first 25':>9} {'steady 25':>10} {'median':>7} {'p10':>6} "
      f"{'CPU us/10ms':>12} {'Opus us':>8} {'x Opus':>7}  first 3 s")
for r in rows:
    for k, label in (("aec", "echo"), ("all", "all"), ("ref", "echo ref")):
        d = r.get(k)
        if d is None:
            continue
        curve = " ".join(f"{db:.0f}" for t, db in d["erle_db"] if t < 3.0)
        print(f"{r['far']:<14} {label:<9} {fmt(d['first_25db_s'], '.1f'):>8}s "
              f"{fmt(d['steady_25db_from_s'], '.1f'):>9}s {fmt(d['erle_median_after_1s_db']):>7} "
              f"{fmt(d['erle_p10_after_1s_db']):>6} {num(d['cpu_us_per_10ms'], 12, '.0f')} "
              f"{num(d['opus_us_per_10ms'], 8, '.0f')} {num(d['cpu_vs_opus'], 7, '.2f')}  {curve}")
print()
print("Double talk: wideband PESQ of what is sent, against the clean near end")
cols = ["pesq_mic", "pesq_aec", "pesq_ref_aec", "pesq_all", "pesq_ref_all", "pesq_near_only"]
print(f"{'far end':<14} {'near end':<14} {'mic':>6} {'echo':>6} {'ref':>6} {'all':>6} {'ref':>6} "
      f"{'near only':>10}")
for r in rows:
    print(f"{r['far']:<14} {r['near']:<14} " + " ".join(num(r[c], 6, ".2f") for c in cols[:-1])
          + f" {r['pesq_near_only']:10.2f}")
def mean(c):
    xs = [r[c] for r in rows if r[c] is not None]
    return sum(xs) / len(xs) if xs else None
print(f"{'mean':<29} " + " ".join(num(mean(c), 6, ".2f") for c in cols[:-1])
      + f" {mean('pesq_near_only'):10.2f}")
print("(mic: near end plus echo, unprocessed; echo: echo cancellation alone; all: echo "
      "cancellation, noise suppression and gain control; ref: Google's C++ module on the same "
      "signals, its echo canceller, and with its own noise suppressor and its (AGC1) adaptive "
      "digital gain for all; near only: the near end through all three without any "
      "echo.)")
PY
