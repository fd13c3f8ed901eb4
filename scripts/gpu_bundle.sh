#!/usr/bin/env bash
# Packs a build for a GPU machine that has CUDA, NCCL and PyTorch but not
# Debian's libraries (e.g. an Ubuntu image lent for a short run): the GPU
# binaries, the plugin, the shared libraries they need beyond glibc and CUDA,
# and Debian's Open MPI as a relocatable tree. Writes DIR (default .dev):
#   DIR/bin/      moex, libmoex_gpu.so, moex_bench_gpu, gpu_kernels_test (stripped)
#   DIR/lib.tar.xz, DIR/ompi.tar.xz, DIR/env.sh
# On the GPU machine, from a copy of this repository holding DIR:
#   source DIR/env.sh && bash tests/gpu/run_on_gpu.sh DIR/bin/moex mpirun
#   DIR/bin/gpu_kernels_test; DIR/bin/moex_bench_gpu --json out.json
# or all of it, each step under a time limit: bench/run_gpu.sh DIR
# (Used for the H200 run of 2026-11-29, docs/results/2026-11-29-H200.)
#   scripts/gpu_bundle.sh [BUILD_DIR=build/ci] [DIR=.dev]
set -euo pipefail
build="${1:-build/ci}"
out="${2:-.dev}"
for f in "$build/bin/moex" "$build/bin/libmoex_gpu.so" "$build/bin/moex_bench_gpu" "$build/tests/gpu_kernels_test"; do
  [ -f "$f" ] || { echo "gpu_bundle.sh: $f is missing: build with CUDA and NCCL first (cmake --preset ci)"; exit 2; }
done
rm -rf "$out/bin" "$out/lib" && mkdir -p "$out/bin" "$out/lib"
cp "$build/bin/moex" "$build/bin/libmoex_gpu.so" "$build/bin/moex_bench_gpu" "$build/tests/gpu_kernels_test" "$out/bin/"
strip "$out"/bin/*
# Every shared library they need but glibc's, the compiler runtime's and CUDA's
# (the GPU machine's own CUDA, cuBLAS and NCCL are used there).
ldd "$out"/bin/* 2>/dev/null | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/usr/local/cuda|/lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+)\.so|ld-linux' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
tar -C "$out" -cJf "$out/lib.tar.xz" lib && rm -rf "$out/lib"
# Open MPI and what its components load, at their Debian paths, unpacked
# under /tmp/root there and relocated with OPAL_PREFIX. (On the H200 image
# `mpirun` was the image's own, /usr/bin/mpirun; Debian's names it
# mpirun.openmpi, and the ranks ran on these libraries.)
packages="openmpi-bin openmpi-common libopenmpi3 libucx0 libpmix2 libhwloc15 libevent-core-2.1-7
  libevent-pthreads-2.1-7 libfabric1 libpsm2-2 libpsm-infinipath1 libibverbs1 librdmacm1 libnl-3-200
  libnl-route-3-200 libnuma1 libxnvctrl0 libhwloc-plugins libltdl7 libmunge2 libcap2 libmd0 libbsd0"
for p in $packages; do dpkg -L "$p" 2>/dev/null || true; done | grep -v '/doc/\|/man/\|lintian' | sort -u |
  while read -r f; do [ -f "$f" ] && echo "${f#/}"; done > "$out/ompi-files.txt"
tar -C / -cJf "$out/ompi.tar.xz" -T "$out/ompi-files.txt" --dereference
rm -f "$out/ompi-files.txt"
cat > "$out/env.sh" <<ENV
# Source on the GPU machine: unpacks the libraries and Open MPI, sets paths.
here="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
mkdir -p /tmp/moex-lib /tmp/root
tar -xJf "\$here/lib.tar.xz" -C /tmp/moex-lib
tar -xJf "\$here/ompi.tar.xz" -C /tmp/root
export OPAL_PREFIX=/tmp/root/usr PATH=/tmp/root/usr/bin:\$PATH PMIX_MCA_pcompress_base_silence_warning=1
export LD_LIBRARY_PATH=/tmp/moex-lib/lib:/tmp/root/usr/lib/x86_64-linux-gnu:/tmp/root/usr/lib/x86_64-linux-gnu/openmpi/lib:/usr/local/cuda/lib64:\${LD_LIBRARY_PATH:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ENV
du -sh "$out"
echo "gpu_bundle.sh: wrote $out (bin/, lib.tar.xz, ompi.tar.xz, env.sh)"
