// Small models of each family `moex run` supports, with their checkpoints'
// real tensor names, and each family's MoE layer written out from its
// transformers modeling code in double precision (family_fixtures.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace moex::testing {

// A tensor as the checkpoint stores it: F32 values, or the bytes of any
// other dtype (MXFP4, FP4, FP8, BF16, I64) in `u8`, with `f32` holding
// the values they decode to where the reference reads them so.
struct StoredTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<uint8_t> u8;
};

struct FamilyModel {
  nlohmann::json config;
  std::map<std::string, StoredTensor> tensors;  // the checkpoint
  int64_t layer = 0;                            // the MoE layer moex runs by default
  int64_t tokens = 0, hidden = 0;
  std::vector<float> x;                         // [tokens, hidden]
  std::vector<int64_t> input_ids;               // [tokens], hash-routed layers
};

struct Family {
  std::string name;
  std::function<FamilyModel()> make;
  // The layer's output [tokens, hidden] from `model.tensors` and `model.x`.
  std::function<std::vector<double>(const FamilyModel&)> reference;
};

const std::vector<Family>& Families();
const Family* FindFamily(const std::string& name);

}  // namespace moex::testing
