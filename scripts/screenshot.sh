#!/usr/bin/env bash
# Renders the plugin's editor under Xvfb and saves a PNG (default docs/plugin-editor.png).
#
# Runs the standalone build with the dummy audio backend, a fresh cache and songgen home with the
# licence already acknowledged, and the protocol test engine (tests/src/bin/songgen-test-engine.rs) standing in
# for `songgen serve --stdio`, so no model weights are needed. It types lyrics, presses
# Generate twice to fill the take list, then takes the screenshot.
#
# Needs: xvfb x11-apps xdotool imagemagick (Mesa GL: libgl1-mesa-dri), and for the standalone
# build pkg-config libasound2-dev libjack-jackd2-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/plugin-editor.png}

for tool in Xvfb xdotool xwd /usr/bin/convert; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install xvfb x11-apps xdotool imagemagick)"; exit 1; }
done

cargo build -q -p songgen-plugin --features standalone --bin songgen-plugin-standalone
cargo build -q -p songgen-tests --bin songgen-test-engine
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

work=$(mktemp -d)
display=:$((90 + RANDOM % 9))
cleanup() {
  [ -n "${app:-}" ] && kill "$app" 2>/dev/null || true
  [ -n "${xvfb:-}" ] && kill "$xvfb" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

Xvfb "$display" -screen 0 1280x800x24 +extension GLX >/dev/null 2>&1 &
xvfb=$!
sleep 1
export DISPLAY=$display
export SONGGEN_CACHE_DIR=$work/cache
export SONGGEN_HOME=$work/home
export SONGGEN_ENGINE=$target/debug/songgen-test-engine
export SONGGEN_TEST_ENGINE_SECONDS=3
# The licence record `songgen` itself writes (songgen_engine::license).
mkdir -p "$SONGGEN_HOME" && echo tencent-songgeneration-research-license > "$SONGGEN_HOME/license-accepted"

"$target/debug/songgen-plugin-standalone" --backend dummy >"$work/app.log" 2>&1 &
app=$!
win=""
for _ in $(seq 1 60); do
  win=$(xdotool search --name "SongGen" 2>/dev/null | head -1 || true)
  [ -n "$win" ] && break
  sleep 0.5
done
[ -n "$win" ] || { cat "$work/app.log"; echo "no SongGen window"; exit 1; }
sleep 2

# Lyrics: select the default text and type a song.
xdotool mousemove --window "$win" 200 200 click 1
xdotool key --window "$win" ctrl+a
# (`xdotool type` does not turn newlines into Return, so lines are typed one by one.)
while IFS= read -r line; do
  [ -n "$line" ] && xdotool type --window "$win" --delay 5 "$line"
  xdotool key --window "$win" Return
done <<'LYRICS'
[intro-short]

[verse]
Streetlights flicker in the rain
I walk the road I used to know

[chorus]
Hold on, hold on to the night
We are the echo of the light

[outro-short]
LYRICS
sleep 0.5
# Generate twice (the bottom-left button), waiting for each take.
for _ in 1 2; do
  xdotool mousemove --window "$win" 60 676 click 1
  sleep 2
done
sleep 1
xwd -id "$win" -silent >"$work/shot.xwd"
/usr/bin/convert "$work/shot.xwd" "$out"
echo "wrote $out"
