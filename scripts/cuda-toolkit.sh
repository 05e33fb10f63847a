#!/usr/bin/env bash
# Installs a CUDA 13 toolkit from NVIDIA's PyPI wheels into a folder, for building the `cuda`
# feature on a machine without a system toolkit (CI, or making a binary for another machine).
#
#   scripts/cuda-toolkit.sh [--link] VERSION DIR
#
# VERSION: 13.0 or 13.4 (pinned wheel sets below; the locked cudarc accepts 13.0 to 13.4 and its
# build script panics on a newer nvcc). DIR gets DIR/nvidia/cu13/{bin,include,lib,nvvm}.
# Without --link: only what `cargo check --features cuda` needs (nvcc compiles candle's kernels).
# With --link: also cuBLAS, cuRAND and NVRTC, `libX.so` links next to their versioned `.so`
# files, and a link-time stand-in for the driver's libcuda.so.1 (see make_libcuda_stub), so that
# `cargo build --features cuda` links.
# Prints the environment to use: eval "$(scripts/cuda-toolkit.sh 13.0 DIR)". Use one DIR per
# set: changing the set reinstalls every wheel in DIR (pip --target replaces `nvidia/` whole).
set -euo pipefail

link=0
if [ "${1:-}" = --link ]; then
  link=1
  shift
fi
version=${1:?usage: cuda-toolkit.sh [--link] VERSION DIR}
dir=${2:?usage: cuda-toolkit.sh [--link] VERSION DIR}

# One pinned set per toolkit version: what `nvcc --version` reports must be a version cudarc
# 0.19.10 knows (Cargo.lock), so these pins move together with cudarc.
case "$version" in
  13.0)
    compile="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
             nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
    linked="nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14" ;;
  13.4)
    compile="nvidia-cuda-nvcc==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-crt==13.4.92
             nvidia-cuda-runtime==13.4.92 nvidia-cuda-cccl==13.3.5.0.6"
    linked="nvidia-cuda-nvrtc==13.4.92 nvidia-curand==10.4.5.25 nvidia-cublas==13.10.0.20" ;;
  *)
    echo "cuda-toolkit.sh: unknown toolkit version $version (known: 13.0, 13.4)" >&2
    exit 2 ;;
esac
wanted=$compile
[ "$link" = 1 ] && wanted="$compile $linked"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
root="$dir/nvidia/cu13"
stamp="$dir/.installed"
# shellcheck disable=SC2086
want_stamp=$(echo $wanted | tr ' ' '\n' | sort | tr '\n' ' ')
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
  # --no-deps: the wheels' own dependencies are other CUDA wheels we pin ourselves.
  # shellcheck disable=SC2086
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$dir" $wanted >&2
  echo "$want_stamp" >"$stamp"
fi
[ -x "$root/bin/nvcc" ] || { echo "cuda-toolkit.sh: $root/bin/nvcc is missing" >&2; exit 1; }

if [ "$link" = 1 ]; then
  # The wheels ship only versioned libraries (libcublas.so.13); the linker looks for libX.so.
  for so in "$root"/lib/lib*.so.*; do
    base=${so%%.so.*}.so
    [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
  done
  # No wheel ships the driver's libcuda.so (the toolkit's stubs/ folder is not on PyPI). The
  # linker only needs a shared object named libcuda.so.1 defining the symbols cudarc uses; at
  # run time the driver's real library is loaded. Build one from the driver API header: one
  # empty function per `cu*` symbol declared there.
  stub="$root/lib/stubs"
  if [ ! -f "$stub/libcuda.so" ]; then
    mkdir -p "$stub"
    {
      # Every driver function the headers declare (`CUresult CUDAAPI cuInit(...)`), and the
      # versioned names they map with #define (cuMemAlloc -> cuMemAlloc_v2, ...).
      cat "$root"/include/*.h | tr '\n' ' ' | grep -oE 'CUDAAPI +cu[A-Za-z0-9_]+ *\(' \
        | sed -E 's/CUDAAPI +(cu[A-Za-z0-9_]+).*/\1/'
      grep -ohE '#define +cu[A-Za-z0-9_]+ +cu[A-Za-z0-9_]+_v[0-9]+' "$root"/include/*.h \
        | awk '{print $3}'
    } | sort -u | sed 's/.*/void &(void) {}/' >"$stub/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda_stub.c"
  fi
fi

echo "export CUDA_HOME='$root' PATH='$root/bin':\"\$PATH\""
