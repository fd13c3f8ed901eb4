# Dependencies. Required ones come from Debian packages (scripts/setup.sh
# installs them); optional ones are detected, reported once in the summary,
# and skipped when absent: the build never fails because a GPU is missing.

find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json 3.10 CONFIG REQUIRED)
# How a project that finds the installed moex finds what its layers link
# (moex_dependency(), cmake/MoexLayers.cmake); the macros are
# cmake/moexConfig.cmake.in's.
moex_dependency("absl::*" "find_dependency(absl CONFIG)")
moex_dependency("nlohmann_json::*" "find_dependency(nlohmann_json 3.10 CONFIG)")
find_package(CLI11 CONFIG REQUIRED)
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
# Checksums of the host weight cache (runtime/ep/src/weight_cache.cc): XXH3,
# which runs at memory speed (zlib's CRC-32 took half of a cache read).
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
moex_dependency(PkgConfig::XXHASH "_moex_pkg_target(XXHASH libxxhash)")

# MPI launches and carries moex's multi-rank runs: required.
find_package(MPI REQUIRED COMPONENTS C)
set(MOEX_HAVE_MPI ON)
moex_dependency("MPI::*" "_moex_find_mpi()")

set(MOEX_HAVE_UCX OFF)
if(MOEX_ENABLE_UCX)
  pkg_check_modules(UCX QUIET IMPORTED_TARGET ucx)
  if(UCX_FOUND)
    set(MOEX_HAVE_UCX ON)
    moex_dependency(PkgConfig::UCX "_moex_pkg_target(UCX ucx)")
  endif()
endif()

# CUDA: nvcc is not on PATH on these machines, so look in the usual prefix.
set(MOEX_HAVE_CUDA OFF)
set(MOEX_HAVE_NCCL OFF)
if(MOEX_ENABLE_CUDA)
  if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS "/usr/local/cuda/bin/nvcc")
    set(CUDAToolkit_ROOT "/usr/local/cuda")
  endif()
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(MOEX_HAVE_CUDA ON)
    find_library(MOEX_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
    find_path(MOEX_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include)
    if(MOEX_NCCL_LIBRARY AND MOEX_NCCL_INCLUDE_DIR)
      set(MOEX_HAVE_NCCL ON)
    endif()
  endif()
endif()

# The control plane's gRPC API.
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(SQLite3 REQUIRED)
# --metrics-listen: Prometheus text exposition (Debian's prometheus-cpp-dev).
find_package(prometheus-cpp CONFIG REQUIRED)
# Logs (core/log.h): Debian's libspdlog-dev, built on its libfmt-dev.
find_package(spdlog CONFIG REQUIRED)
moex_dependency("spdlog::*" "find_dependency(spdlog CONFIG)")
find_package(OpenSSL REQUIRED COMPONENTS Crypto)  # rank secrets (HMAC-SHA256)
find_program(MOEX_PROTOC protoc REQUIRED)
find_program(MOEX_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

find_package(GTest QUIET)

function(moex_print_summary)
  set(lines "")
  foreach(part MPI UCX CUDA NCCL)
    if(MOEX_HAVE_${part})
      string(APPEND lines "\n  ${part}: found")
    else()
      string(APPEND lines "\n  ${part}: not found, skipped")
    endif()
  endforeach()
  if(MOEX_HAVE_CUDA)
    string(APPEND lines "\n  CUDA toolkit: ${CUDAToolkit_VERSION} at ${CUDAToolkit_BIN_DIR}")
  endif()
  message(STATUS "moex ${PROJECT_VERSION} optional parts:${lines}")
endfunction()
