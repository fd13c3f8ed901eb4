#!/usr/bin/env bash
# Installs every build and test dependency of moex from Debian's packages.
# Idempotent: packages already installed are skipped, and apt is not touched
# at all when nothing is missing. CUDA/NCCL come from the toolkit under
# /usr/local/cuda when present; they are optional and never installed here.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev
  libgtest-dev libgmock-dev
  nlohmann-json3-dev
  libcli11-dev
  libopenmpi-dev openmpi-bin
  libucx-dev
  libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc
  libopenblas-dev
  libsqlite3-dev
  prometheus-cpp-dev
  libspdlog-dev
  prometheus
  libssl-dev
  libxxhash-dev
  clang libclang-rt-14-dev
  python3
  python3-grpcio python3-protobuf python3-venv python3-setuptools python3-wheel
  openssl
  procps
  iproute2 util-linux
  slurmctld slurmd slurm-client munge
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "setup: installing ${#missing[@]} missing package(s): ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
