#!/usr/bin/env bash
# Congestion: a call's media through a bottleneck that changes, as `tc tbf` makes one: 24
# kbit/s on the wire for 20 s, then 64 kbit/s, then 16 kbit/s (the clean call needs about 45).
# Runs `natter media-loopback --capacity` (the simulator's link with a rate-limited queue of
# 100 ms in front of it) on 60 s of speech (media/testdata/speech.wav three times), prints
# the timeline and a summary (time to fit a narrowed link, loss after recovery once fitted,
# time back to the clean plan once it widened) and plots the sender's wire rate, the link's
# rate and the loss after recovery into target/congestion/congestion.svg.
#
#   benches/congestion.sh                      # the schedule above
#   CAPACITY=0:24,20:64,40:16 SEEDS="1 2" benches/congestion.sh
#   benches/congestion.sh --netns              # the same schedule with real processes:
#       a call between two `natter client`s behind NAT routers in network namespaces, `tc
#       tbf rate ... latency 100ms` on the way to the callee (cli/tests/netns_congestion.rs,
#       an ignored test); plots target/congestion/netns.svg from the kernel's qdisc counters
#       (offered and delivered rate) and the callee's concealed time. Needs root, iproute2,
#       nftables and tc.
#
# Needs python3 (standard library only). Honours CARGO_TARGET_DIR; NATTER=/path/to/natter
# uses that binary. Not part of `make test` (the same behaviour is asserted by
# `natter-media`'s loopback test `the_sender_follows_a_narrow_link`).
#
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/congestion
if [ "${1:-}" = "--netns" ]; then
  mkdir -p "$OUT"
  NATTER_CONGESTION_OUT="$PWD/$OUT/netns.csv" cargo test --quiet -p natter-cli \
    --test netns_congestion -- --ignored --nocapture
  python3 - "$OUT/netns.csv" "$OUT/netns.svg" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
f = lambda r, k: float(r[k])
W, H, P = 900, 300, 50
n = len(rows)
top = max(max(min(f(r, "offered_kbps"), 100.0) for r in rows), max(f(r, "link_kbps") for r in rows)) * 1.1
x = lambda t: P + (W - 2 * P) * t / max(1, n)
y = lambda v, m: H - P - (H - 2 * P) * min(v, m) / m
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<text x="{P}" y="20">netns, tc tbf: offered (blue) and delivered (green) kbit/s, link rate (black), '
       f'loss after recovery at the callee (red, 0-100 %)</text>',
       f'<line x1="{P}" y1="{y(0, top)}" x2="{W - P}" y2="{y(0, top)}" stroke="#888"/>']
for v in range(0, int(top) + 1, 20):
    svg.append(f'<text x="{P - 30}" y="{y(v, top) + 4}">{v}</text>')
for t in range(0, n + 1, 10):
    svg.append(f'<text x="{x(t) - 6}" y="{H - P + 16}">{t} s</text>')
for key, scale, colour in [("link_kbps", top, "black"), ("offered_kbps", top, "#1f6fd0"),
                           ("delivered_kbps", top, "#20a040"), ("loss_after_pct", 100.0, "#d03030")]:
    pts = " ".join(f"{x(f(r, 't')):.1f},{y(f(r, key), scale):.1f}" for r in rows)
    svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg))
print(f"plot: {sys.argv[2]}")
PY
  exit 0
fi
CAPACITY=${CAPACITY:-0:24,20:64,40:16}
SEEDS=${SEEDS:-"1 2 3"}
mkdir -p "$OUT"

if [ -z "${NATTER:-}" ]; then
  cargo build --release --quiet -p natter-cli
  NATTER=${CARGO_TARGET_DIR:-target}/release/natter
fi

python3 - media/testdata/speech.wav "$OUT/speech60.wav" <<'PY'
import sys, wave
with wave.open(sys.argv[1]) as r:
    params, frames = r.getparams(), r.readframes(r.getnframes())
with wave.open(sys.argv[2], "wb") as w:
    w.setparams(params)
    w.writeframes(frames * 3)
PY

for seed in $SEEDS; do
  "$NATTER" media-loopback --input "$OUT/speech60.wav" --output "$OUT/out-$seed.wav" \
    --capacity "$CAPACITY" --seed "$seed" > "$OUT/run-$seed.json"
done

python3 - "$OUT" $SEEDS <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f"{out}/run-{s}.json"))["timeline"] for s in seeds]

def summary(tl):
    caps = [s["capacity_kbps"] for s in tl]
    steps = [i for i in range(1, len(caps)) if caps[i] != caps[i - 1]]
    bounds = [0] + steps + [len(tl)]
    rows = []
    for a, b in zip(bounds, bounds[1:]):
        cap = caps[a]
        narrowed = a == 0 or cap < caps[a - 1]
        fit = next((i - a for i in range(a, b) if tl[i]["sent_kbps"] <= cap * 1.05), None)
        back = next((i - a for i in range(a, b)
                     if tl[i]["frame_ms"] == 20 and tl[i]["bitrate"] >= 22000), None)
        settled = tl[a + 2:b]
        after = sum(s["loss_after_pct"] for s in settled) / max(1, len(settled))
        sent = sum(s["sent_kbps"] for s in settled) / max(1, len(settled))
        rows.append((a, b, cap, narrowed, fit, back, after, sent))
    return rows

print(f"{'seed':>4} {'from s':>6} {'link kbit/s':>11} {'fits after s':>12} {'clean plan after s':>18} "
      f"{'sent kbit/s':>11} {'loss after %':>12}")
for seed, tl in zip(seeds, runs):
    for a, b, cap, narrowed, fit, back, after, sent in summary(tl):
        print(f"{seed:>4} {a:>6} {cap:>11.0f} {fit if narrowed else '-':>12} "
              f"{'-' if narrowed else back:>18} {sent:>11.1f} {after:>12.2f}")
print("(fits: the first second whose wire rate is within the link; clean plan: 22 kbit/s in 20 ms "
      "frames again; sent and loss after recovery: means from 2 s after the change to the next.)")

# The plot: one panel per seed, wire rate and link rate (kbit/s) and loss after recovery (%).
W, H, P = 900, 260, 50
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(runs)}" '
       f'font-family="sans-serif" font-size="12">']
for k, (seed, tl) in enumerate(zip(seeds, runs)):
    y0 = k * H
    n = len(tl)
    top = max(max(s["sent_kbps"] for s in tl), max(s["capacity_kbps"] for s in tl), 1) * 1.1
    x = lambda t: P + (W - 2 * P) * t / max(1, n)
    y = lambda v, m: y0 + H - P + -(H - 2 * P) * v / m
    svg.append(f'<text x="{P}" y="{y0 + 20}">seed {seed}: sender wire rate (blue), link rate '
               f'(black), loss after recovery (red, right axis, 0-100 %)</text>')
    svg.append(f'<line x1="{P}" y1="{y(0, top)}" x2="{W - P}" y2="{y(0, top)}" stroke="#888"/>')
    for v in range(0, int(top) + 1, 20):
        svg.append(f'<text x="{P - 30}" y="{y(v, top) + 4}">{v}</text>')
    for t in range(0, n + 1, 10):
        svg.append(f'<text x="{x(t) - 6}" y="{y0 + H - P + 16}">{t} s</text>')
    def line(key, scale, colour, step=False):
        pts = []
        for s in tl:
            pts.append(f"{x(s['t']):.1f},{y(s[key], scale):.1f}")
            if step:
                pts.append(f"{x(s['t'] + 1):.1f},{y(s[key], scale):.1f}")
        svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                   f'points="{" ".join(pts)}"/>')
    line("capacity_kbps", top, "black", step=True)
    line("sent_kbps", top, "#1f6fd0")
    line("loss_after_pct", 100.0, "#d03030")
svg.append("</svg>")
open(f"{out}/congestion.svg", "w").write("\n".join(svg))
print(f"plot: {out}/congestion.svg")
PY
