#!/usr/bin/env bash
# The GPU check: prepared on a machine without a GPU, run on a lent GPU machine that has the
# NVIDIA driver and the CUDA 13 runtime libraries but no Rust toolchain and no network.
#
#   scripts/gpu-check.sh prepare [--cuda 13.0] [--cc 90] [--bundle DIR] [--case-budget-mib N]
#       Here: builds a release CUDA `songgen` (scripts/build-cuda-engine.sh), writes the tiny
#       model, makes a subset of the parity fixtures (whole weights, the cases chosen smallest
#       first: each unit's smallest case, then more while the directory's cases stay under N MiB),
#       and packs it all, compressed, with this script into DIR [default: .gpu-check in the
#       checkout's root, ignored by git]. Prints what would travel (the tree's tracked files
#       without the parity fixtures, plus the bundle) against the device tool's 64 MiB.
#   scripts/gpu-check.sh remote [--bundle DIR] [--out DIR]
#       There: unpacks the bundle [default: this script's folder] and runs, each step timed and
#       logged into DIR [default: $OUT, else BUNDLE/results; 8 files]: nvidia-smi and ldd
#       (machine.txt), `songgen doctor` (GPU name, free memory), the three
#       parity directories on --device cuda (f32: the fixtures carry no bf16/f16 tolerances),
#       a tiny-model `generate` on the GPU, and `songgen check timings` at the released widths
#       with random weights (LM prefill + decode step in bf16 and f32, one flow step, one VAE
#       chunk), with the GPU's memory sampled by nvidia-smi throughout (peak in summary.txt).
#   scripts/gpu-check.sh dry [--work DIR]
#       Both, here, on the CPU: the same steps with a CPU engine, small sizes and a small case
#       budget (tests/tests/gpu_check_dry.rs runs it). GPU_CHECK_SONGGEN (an engine binary)
#       and GPU_CHECK_TINY_MODEL (a folder written by `cargo xtask tiny-model`) skip the builds.
#
# On the device tool (docs/perf.md "GPU check"): it sends the checkout the session was started
# in (prepare there, so .gpu-check/ is in its root), whole, and the parity fixtures alone are
# 142 MB of the 64 MiB it carries, so hide them first with
#   git sparse-checkout set --no-cone '/*' '!/tests/fixtures/parity/'
# then run `bash .gpu-check/gpu-check.sh remote --bundle .gpu-check` with carry [".gpu-check"]
# and timeout_s 540, and `git sparse-checkout disable` afterwards.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
die() { echo "gpu-check: $*" >&2; exit 2; }
mib() { echo "$(( ($1 + 1048575) / 1048576 ))"; }

# ---------------------------------------------------------------- prepare (here)
prepare() {
  local dry=0 cuda=13.0 cc=90 bundle= budget=4
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry) dry=1; shift ;;
      --cuda) cuda=$2; shift 2 ;;
      --cc) cc=$2; shift 2 ;;
      --bundle) bundle=$2; shift 2 ;;
      --case-budget-mib) budget=$2; shift 2 ;;
      *) die "prepare: unknown argument $1" ;;
    esac
  done
  local repo
  repo=$(cd "$here/.." && pwd)
  [ -d "$repo/tests/fixtures/parity" ] || die "prepare runs in a checkout with tests/fixtures/parity"
  bundle=${bundle:-$repo/.gpu-check}
  # A dry run packs the same files, only compressed less (xz -6 takes minutes on 2 cores).
  local xzl=-6
  [ "$dry" = 1 ] && xzl=-0
  mkdir -p "$bundle"
  bundle=$(cd "$bundle" && pwd)
  local stage
  stage=$(mktemp -d)
  # A RETURN trap outlives the function unless it removes itself.
  trap 'rm -rf "${stage:-}"; trap - RETURN' RETURN

  # The engine.
  local engine=${GPU_CHECK_SONGGEN:-}
  if [ -z "$engine" ]; then
    if [ "$dry" = 1 ]; then
      (cd "$repo" && cargo build --quiet -p songgen-engine --bin songgen --features parity)
      engine="$repo/target/debug/songgen"
    else
      local built
      built=$("$repo/scripts/build-cuda-engine.sh" --cuda "$cuda" --cc "$cc" --features parity)
      engine="$repo/$built/songgen"
      cp "$repo/$built/BUILD-INFO" "$bundle/BUILD-INFO"
    fi
  fi
  [ -x "$engine" ] || die "no engine binary at $engine"
  cp "$engine" "$stage/songgen"
  strip "$stage/songgen" 2>/dev/null || true
  xz -T0 "$xzl" -c "$stage/songgen" >"$bundle/songgen.xz"
  rm "$stage/songgen"

  # The tiny model.
  if [ -n "${GPU_CHECK_TINY_MODEL:-}" ]; then
    cp -a "$GPU_CHECK_TINY_MODEL" "$stage/tiny"
  else
    (cd "$repo" && cargo xtask tiny-model "$stage/tiny" >/dev/null)
  fi

  # The parity subset.
  python3 - "$repo/tests/fixtures/parity" "$stage/parity" "$budget" >"$bundle/SUBSET.txt" <<'PY'
import json, os, shutil, sys
src, dst, budget = sys.argv[1], sys.argv[2], float(sys.argv[3]) * 1048576
for kind in ("lelm", "decoder", "prompt"):
    d = os.path.join(src, kind)
    m = json.load(open(os.path.join(d, "manifest.json")))
    size = lambda c: os.path.getsize(os.path.join(d, c["file"]))
    cases = sorted(m["cases"], key=lambda c: (size(c), c["name"]))
    chosen, used = [], 0
    # Each unit's smallest case first, then the rest, smallest first, within the budget.
    firsts = {}
    for c in cases:
        firsts.setdefault(c["unit"], c)
    for c in list(firsts.values()) + [c for c in cases if c not in firsts.values()]:
        if c not in chosen and used + size(c) <= budget:
            chosen.append(c)
            used += size(c)
    out = os.path.join(dst, kind)
    os.makedirs(os.path.join(out, "cases"))
    # Everything but the cases and the PyTorch copy of the weights (`weights_pt`).
    skip = {"cases", m.get("weights_pt")}
    for name in os.listdir(d):
        if name in skip or name == "manifest.json":
            continue
        p = os.path.join(d, name)
        (shutil.copytree if os.path.isdir(p) else shutil.copy2)(p, os.path.join(out, name))
    keep = {c["name"] for c in chosen}
    for c in chosen:
        shutil.copy2(os.path.join(d, c["file"]), os.path.join(out, c["file"]))
    m["cases"] = [c for c in m["cases"] if c["name"] in keep]
    json.dump(m, open(os.path.join(out, "manifest.json"), "w"), indent=1)
    units = sorted({c["unit"] for c in cases})
    missing = sorted(set(units) - {c["unit"] for c in chosen})
    print(f"{kind}: {len(chosen)} of {len(cases)} cases ({used / 1048576:.1f} MiB), "
          f"{len(units) - len(missing)} of {len(units)} units"
          + (f"; units left out: {', '.join(missing)}" if missing else ""))
PY
  tar -C "$stage" -cf - tiny parity | xz -T0 "$xzl" >"$bundle/data.tar.xz"
  cp "$here/gpu-check.sh" "$bundle/gpu-check.sh"
  chmod +x "$bundle/gpu-check.sh"

  # What the device tool would carry: the tracked files (without the hidden fixtures) + bundle.
  local tracked=0 packed
  if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    tracked=$(cd "$repo" && git ls-files -z | grep -zv '^tests/fixtures/parity/' \
      | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
  fi
  packed=$(du -sb "$bundle" | cut -f1)
  {
    echo "bundle: $(mib "$packed") MiB ($(cd "$bundle" && ls -l songgen.xz data.tar.xz | awk '{printf "%s %d MiB; ", $9, ($5+1048575)/1048576}'))"
    echo "travels: $(mib $((packed + tracked))) MiB of 64 MiB (tracked files without the parity fixtures: $(mib "$tracked") MiB)"
  } | tee "$bundle/INFO"
  cat "$bundle/SUBSET.txt"
  if [ $((packed + tracked)) -gt $((60 * 1048576)) ]; then
    die "the bundle is too large to travel; lower --case-budget-mib"
  fi
}

# ---------------------------------------------------------------- remote (there)
remote() {
  local dry=0 bundle out=${OUT:-}
  bundle=$(dirname "$0")
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry) dry=1; shift ;;
      --bundle) bundle=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      *) die "remote: unknown argument $1" ;;
    esac
  done
  bundle=$(cd "$bundle" && pwd)
  out=${out:-$bundle/results}
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  local work
  work=$(mktemp -d)
  # At most 8 files come back from the device tool: machine.txt, summary.txt, doctor.log,
  # parity.log, generate.log, timings.log, timings.jsonl, gpu-memory.csv.
  # BUILD-INFO comes only with a CUDA build (not in a dry run).
  {
    echo "== bundle"
    local f
    for f in INFO BUILD-INFO SUBSET.txt; do
      if [ -f "$bundle/$f" ]; then cat "$bundle/$f"; fi
    done
  } >"$out/machine.txt"
  xz -dc "$bundle/songgen.xz" >"$work/songgen"
  chmod +x "$work/songgen"
  xz -dc "$bundle/data.tar.xz" | tar -C "$work" -xf -
  local songgen="$work/songgen" model="$work/tiny/songgeneration_v2_tiny"
  local device=cuda size=released repeat=3 dtypes="bf16 f32" sampler=
  if [ "$dry" = 1 ]; then
    device=cpu size=small repeat=1 dtypes="f32"
  else
    # The CUDA runtime libraries: the system's, or PyTorch's nvidia-* wheels.
    local libdirs="" d
    for d in $(python3 -c 'import nvidia, sys; print(" ".join(nvidia.__path__))' 2>/dev/null) \
             /usr/local/cuda/lib64 /usr/local/lib/python3*/dist-packages/nvidia; do
      [ -d "$d" ] || continue
      libdirs="$libdirs:$(find "$d" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')"
    done
    export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    { echo "== ldd"; ldd "$songgen"; echo "== nvidia-smi"; nvidia-smi; } >>"$out/machine.txt" 2>&1 || true
    nvidia-smi --query-gpu=timestamp,memory.used,memory.total,utilization.gpu \
      --format=csv,noheader,nounits -lms 200 >"$out/gpu-memory.csv" 2>/dev/null &
    sampler=$!
  fi
  : >"$out/summary.txt"
  local failed=0
  # step NAME LOGFILE COMMAND...: runs with a time limit, appends "NAME ok|FAIL(rc) Ns".
  step() {
    local name=$1 log=$2 t0 rc=0
    shift 2
    t0=$(date +%s%N)
    echo "== $name: $*" >>"$out/$log"
    timeout 300 "$@" >>"$out/$log" 2>&1 || rc=$?
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local secs="$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
    if [ "$rc" = 0 ]; then
      printf '%-22s ok      %ss\n' "$name" "$secs" >>"$out/summary.txt"
    else
      printf '%-22s FAIL(%s) %ss\n' "$name" "$rc" "$secs" >>"$out/summary.txt"
      failed=1
    fi
  }
  step doctor doctor.log "$songgen" doctor --model "$model"
  step parity parity.log "$songgen" check parity --device "$device" \
    "$work/parity/lelm" "$work/parity/decoder" "$work/parity/prompt"
  step generate generate.log "$songgen" generate --model "$model" --device "$device" \
    --accept-license --seed 1 --quiet --out "$work/out" \
    --lyrics '[verse] hello there. how are you ; [chorus] la la la'
  ls -l "$work/out" >>"$out/generate.log" 2>&1 || true
  local dt
  for dt in $dtypes; do
    step "timings-$dt" timings.log sh -c "\"$songgen\" check timings --device $device --dtype $dt \
      --size $size --repeat $repeat >>\"$out/timings.jsonl\""
  done
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    awk -F', *' '$2+0 > m {m = $2+0; t = $3} END {if (m) printf "peak GPU memory used: %d MiB of %d MiB\n", m, t}' \
      "$out/gpu-memory.csv" >>"$out/summary.txt"
  fi
  grep -h ' passed, ' "$out/parity.log" >>"$out/summary.txt" || true
  cat "$out/summary.txt"
  rm -rf "$work"
  return "$failed"
}

# ---------------------------------------------------------------- dry (here, CPU)
dry() {
  local work
  work=$(mktemp -d)
  while [ $# -gt 0 ]; do
    case "$1" in
      --work) work=$2; shift 2 ;;
      *) die "dry: unknown argument $1" ;;
    esac
  done
  mkdir -p "$work"
  prepare --dry --bundle "$work/bundle" --case-budget-mib "${GPU_CHECK_CASE_BUDGET_MIB:-1}"
  "$work/bundle/gpu-check.sh" remote --dry --bundle "$work/bundle" --out "$work/results"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  prepare) prepare "$@" ;;
  remote) remote "$@" ;;
  dry) dry "$@" ;;
  *) sed -n '2,32p' "$0"; exit 2 ;;
esac
