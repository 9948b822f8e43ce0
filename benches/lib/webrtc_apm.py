"""The reference for benches/echo.sh: Google's WebRTC audio processing module in C++
(libwebrtc-audio-processing 2.x, AEC3; through the `aec-audio-processing` package from PyPI),
run on the same far end and microphone signals as Natter's pure-Rust port.

    python webrtc_apm.py FAR.wav MIC.wav OUT.wav [echo|all]

Feeds 10 ms pieces as the media thread does: the far end's (what is played) first, then the
microphone's. `all` adds its noise suppression (moderate) and its gain control in adaptive
digital mode (the package's `agc_mode=1`: AGC1's, not the AGC2 Natter runs).
"""
import sys

import numpy as np
import soundfile as sf
from aec_audio_processing import AudioProcessor

far, fs = sf.read(sys.argv[1], dtype="int16")
mic, fs2 = sf.read(sys.argv[2], dtype="int16")
assert fs == fs2 == 16000, (fs, fs2)
every = len(sys.argv) > 4 and sys.argv[4] == "all"
ap = AudioProcessor(enable_aec=True, enable_ns=every, ns_level=1, enable_agc=every,
                    agc_mode=1, enable_vad=False)
ap.set_stream_format(16000, 1)
ap.set_reverse_stream_format(16000, 1)
ap.set_stream_delay(0)
far = np.concatenate([far, np.zeros(max(0, len(mic) - len(far)), np.int16)])
n = fs // 100
out = []
for i in range(0, len(mic) - n + 1, n):
    ap.process_reverse_stream(far[i:i + n].tobytes())
    out.append(np.frombuffer(ap.process_stream(mic[i:i + n].tobytes()), np.int16))
sf.write(sys.argv[3], np.concatenate(out), fs, subtype="PCM_16")
