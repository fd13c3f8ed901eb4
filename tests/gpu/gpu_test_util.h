// What the GPU kernel tests share: a skip where this process sees no GPU,
// device buffers filled from and read back to the host, random data.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "moex/kernels/cuda/moe_kernels.h"

namespace moex::kernels::cuda::testing {

#define SKIP_WITHOUT_GPU()                                          \
  do {                                                              \
    absl::Status gpu = DeviceAvailable();                           \
    if (!gpu.ok()) GTEST_SKIP() << gpu.message() << ": GPU test skipped"; \
  } while (0)

// A device buffer holding a copy of `host`, read back with Get().
template <typename T>
struct Device {
  explicit Device(const std::vector<T>& host) : n(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit Device(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
  }
  ~Device() { cudaFree(p); }
  std::vector<T> Get() const {
    std::vector<T> host(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(host.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }
  T* p = nullptr;
  size_t n;
};

inline std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace moex::kernels::cuda::testing
