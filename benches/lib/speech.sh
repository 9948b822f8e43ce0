# Shared by the speech benchmarks (media_quality.sh, echo.sh); source it from the repository's
# root. Sets VENV (a python with numpy, scipy, soundfile and pesq, made on first use in
# target/pesq-venv or $PESQ_VENV), RECORDINGS (the three speech recordings, unless set) and
# defines pesq_wb REF DEG [SKIP] (prints wideband PESQ of DEG, from SKIP seconds on, against
# REF, 16 kHz WAV files).

VENV=${PESQ_VENV:-target/pesq-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pesq, soundfile, numpy, scipy' 2>/dev/null; then
  echo "Installing pesq, numpy, scipy, soundfile into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet numpy scipy soundfile pesq >&2
fi

# The generated recordings: Harvard sentences (public domain) and the German "Nordwind und
# Sonne" fable (the IPA's standard passage), at 16 kHz.
GEN=target/media-quality/recordings
mkdir -p "$GEN"
make_recording() { # name voice words-per-minute text
  local out="$GEN/$1.wav"
  [ -s "$out" ] && return
  command -v espeak-ng > /dev/null || { echo "espeak-ng missing: apt-get install espeak-ng" >&2; exit 1; }
  espeak-ng -v "$2" -s "$3" -w "$GEN/$1.raw.wav" "$4"
  "$VENV/bin/python" - "$GEN/$1.raw.wav" "$out" <<'PY'
import sys
from math import gcd
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
x, fs = sf.read(sys.argv[1], dtype="float64")
g = gcd(16000, fs)
y = resample_poly(x, 16000 // g, fs // g)
y = y / max(1e-9, float(np.abs(y).max())) * 0.5
sf.write(sys.argv[2], (y * 32767).astype(np.int16), 16000, subtype="PCM_16")
PY
  rm -f "$GEN/$1.raw.wav"
}
if [ -z "${RECORDINGS:-}" ]; then
  make_recording en-us-female en-us+f3 150 "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. It is easy to tell the depth of a well. These days a chicken leg is a rare dish. Rice is often served in round bowls. The juice of lemons makes fine punch. The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage. Four hours of steady work faced us. A large size in stockings is hard to sell."
  make_recording de-male de+m4 140 "Der Nordwind und die Sonne stritten sich einmal, wer von ihnen beiden wohl der Stärkere wäre, als ein Wanderer, der in einen warmen Mantel gehüllt war, des Weges daherkam. Sie wurden einig, dass derjenige für den Stärkeren gelten sollte, der den Wanderer zwingen würde, seinen Mantel abzunehmen."
  RECORDINGS="media/testdata/speech.wav $GEN/en-us-female.wav $GEN/de-male.wav"
fi

pesq_wb() { # REF DEG [SKIP]
  "$VENV/bin/python" - "$1" "$2" "${3:-0}" <<'PY'
import sys
import numpy as np
import soundfile as sf
from pesq import pesq
ref, fs = sf.read(sys.argv[1], dtype="int16")
deg, fs2 = sf.read(sys.argv[2], dtype="int16")
assert fs == fs2 == 16000, (fs, fs2)
deg = deg[int(float(sys.argv[3]) * fs):]
n = min(len(ref), len(deg))
print(f"{pesq(fs, ref[:n].astype(np.float64), deg[:n].astype(np.float64), 'wb'):.3f}")
PY
}

if [ -z "${NATTER:-}" ]; then
  cargo build --release --quiet -p natter-cli
  NATTER=${CARGO_TARGET_DIR:-target}/release/natter
fi
