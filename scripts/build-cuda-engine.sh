#!/usr/bin/env bash
# Builds a CUDA `songgen` release binary on a machine without a GPU, a driver or a system CUDA
# toolkit, from NVIDIA's PyPI toolkit wheels (scripts/cuda-toolkit.sh), for one compute
# capability and toolkit version; strips and compresses it for transport.
#
#   scripts/build-cuda-engine.sh [--cuda 13.0|13.4] [--cc 90] [--features F] [--out DIR]
#
# --cuda: the toolkit the kernels are built with. The driver of the machine that runs the binary
#   must support it (CUDA 13.0 needs a 580-series driver or newer).
# --cc: the compute capability the kernels are compiled for (80 = Ampere A100 and, through the
#   PTX JIT, newer GPUs; 86/89 = consumer Ampere/Ada; 90 = Hopper H100/H200, as sm_90a, which
#   runs only on Hopper). One capability per build: candle's kernels are compiled to PTX for one.
# --features: more engine features besides `cuda` (e.g. parity, for `songgen check parity`).
# --out: where `songgen` and `songgen.xz` go [default: target/cuda-engine-<cuda>-sm<cc>].
#
# The binary needs, on the machine that runs it: the NVIDIA driver (libcuda.so.1) and the CUDA
# runtime libraries libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 on
# the loader's path (e.g. PyTorch's nvidia-* wheels: LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib).
# The build takes about 20 minutes on 2 cores (nvcc compiling candle's kernels, then the link).
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=13.0
cc=90
features=cuda
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda=$2; shift 2 ;;
    --cc) cc=$2; shift 2 ;;
    --features) features="cuda,$2"; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-cuda-engine.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$cc" in
  ''|*[!0-9]*) echo "build-cuda-engine.sh: --cc takes a number such as 80 or 90, not $cc" >&2; exit 2 ;;
esac
out=${out:-target/cuda-engine-$cuda-sm$cc}

eval "$(scripts/cuda-toolkit.sh --link "$cuda" "target/cuda-toolkit/$cuda-link")"
export CUDA_COMPUTE_CAP=$cc
target="target/cuda-$cuda-sm$cc"
echo "building songgen with CUDA $cuda for compute capability $cc into $target" >&2
cargo build --release --locked -p songgen-engine --bin songgen --features "$features" --target-dir "$target"

mkdir -p "$out"
cp "$target/release/songgen" "$out/songgen"
strip "$out/songgen"
xz -T0 -6 -c "$out/songgen" >"$out/songgen.xz"
{
  echo "songgen $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "CUDA toolkit $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute capability $cc"
  echo "needs: $(readelf -d "$out/songgen" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
} >"$out/BUILD-INFO"
cat "$out/BUILD-INFO" >&2
ls -l "$out/songgen" "$out/songgen.xz" >&2
echo "$out"
