// Weight matrices read in the dtype a checkpoint stores them in (FP8 with
// DeepSeek's block scales, MXFP4 blocks and scales, BF16, F16, F32), mapped
// or copied, against the values the test quantised; and the files that are
// wrong: each error names the tensor and the file.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/stored_matrix.h"
#include "moex/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace moex::model {
namespace {

using ::testing::HasSubstr;

struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

class StoredCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_stored_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A safetensors file of `tensors`, written here byte by byte.
  std::string Write(const std::string& name, const std::vector<RawTensor>& tensors) {
    nlohmann::json header = nlohmann::json::object();
    int64_t offset = 0;
    for (const RawTensor& t : tensors) {
      header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + static_cast<int64_t>(t.bytes.size())}}};
      offset += static_cast<int64_t>(t.bytes.size());
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    const uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << text;
    for (const RawTensor& t : tensors) out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    return path;
  }

  static Tensor Values(int64_t rows, int64_t cols) {
    Tensor t({rows, cols});
    std::mt19937 gen(11);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    for (float& v : t.values) v = dist(gen);
    return t;
  }

  // The tensors a checkpoint holds for the matrix `name` in `format`.
  static std::vector<RawTensor> Stored(const std::string& name, const StoredMatrix& m) {
    std::vector<std::byte> values(m.values, m.values + m.value_bytes());
    std::vector<std::byte> scales(m.scales, m.scales + m.scale_bytes());
    const std::string base = name.substr(0, name.size() - std::string(".weight").size());
    switch (m.format) {
      case WeightFormat::kFP8Block:
        return {{name, "F8_E4M3", {m.rows, m.cols}, values},
                {name + "_scale_inv", "F32", StoredMatrix::ScaleShape(m.format, m.rows, m.cols), scales}};
      case WeightFormat::kMXFP4:
        return {{base + "_blocks", "U8", {m.rows, m.cols / 32, 16}, values},
                {base + "_scales", "U8", {m.rows, m.cols / 32}, scales}};
      case WeightFormat::kBF16: return {{name, "BF16", {m.rows, m.cols}, values}};
      case WeightFormat::kF16: return {{name, "F16", {m.rows, m.cols}, values}};
      default: return {{name, "F32", {m.rows, m.cols}, values}};
    }
  }

  std::filesystem::path dir_;
};

TEST_F(StoredCheckpointTest, EachFormatReadsBackTheValuesItWasWrittenWithMappedOrCopied) {
  const Tensor original = Values(160, 96);  // a partial 128-block in each direction
  const std::string name = "model.layers.3.mlp.experts.7.gate_proj.weight";
  for (WeightFormat format : {WeightFormat::kF32, WeightFormat::kBF16, WeightFormat::kF16, WeightFormat::kFP8Block,
                              WeightFormat::kMXFP4}) {
    SCOPED_TRACE(std::string(WeightFormatName(format)));
    absl::StatusOr<StoredMatrix> quantised = StoredMatrix::Quantize(original, format);
    ASSERT_TRUE(quantised.ok());
    // Something before the matrix, so that its bytes do not start on a page.
    std::vector<RawTensor> tensors = {{"pad", "F32", {3}, std::vector<std::byte>(12)}};
    for (RawTensor& t : Stored(name, *quantised)) tensors.push_back(std::move(t));
    const std::string file = Write(std::string(WeightFormatName(format)) + ".safetensors", tensors);
    absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(file);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    ASSERT_EQ(*checkpoint->MatrixFormat(name), format);
    for (bool map : {true, false}) {
      absl::StatusOr<StoredMatrix> read = checkpoint->ReadMatrix(name, 160, 96, map);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_EQ(read->format, format);
      EXPECT_EQ(read->bytes(), quantised->bytes());
      EXPECT_EQ(read->ToTensor().values, quantised->ToTensor().values) << (map ? "mapped" : "copied");
    }
  }
}

// DeepSeek-V4's release: routed experts FP4 packed two to an I8 byte (low
// nibble first) with an F8_E8M0 scale per 32 inputs in '<base>.scale'; the
// shared expert F8_E4M3 with E8M0 128x128 block scales under the same name.
TEST_F(StoredCheckpointTest, DeepseekV4FormatsReadAsMxfp4AndFp8) {
  const std::string name = "layers.3.ffn.experts.7.w1.weight", scale = "layers.3.ffn.experts.7.w1.scale";
  absl::StatusOr<StoredMatrix> fp4 = StoredMatrix::Quantize(Values(160, 96), WeightFormat::kMXFP4);
  ASSERT_TRUE(fp4.ok());
  std::vector<std::byte> values(fp4->values, fp4->values + fp4->value_bytes());
  std::vector<std::byte> scales(fp4->scales, fp4->scales + fp4->scale_bytes());
  const std::string fp4_file = Write("v4_fp4.safetensors", {{"pad", "F32", {3}, std::vector<std::byte>(12)},
                                                             {name, "I8", {160, 48}, values},
                                                             {scale, "F8_E8M0", {160, 3}, scales}});
  absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(fp4_file);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(*checkpoint->MatrixFormat(name), WeightFormat::kMXFP4);
  EXPECT_EQ(checkpoint->MatrixTensors(name), (std::vector<std::string>{name, scale}));
  for (bool map : {true, false}) {
    absl::StatusOr<StoredMatrix> read = checkpoint->ReadMatrix(name, 160, 96, map);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->ToTensor().values, fp4->ToTensor().values);
  }
  // FP8 with E8M0 block scales: the value is the e4m3 value times 2^(s-127).
  const std::string shared = "layers.3.ffn.shared_experts.w2.weight", shared_scale = "layers.3.ffn.shared_experts.w2.scale";
  std::vector<std::byte> fp8(160 * 96);
  for (size_t i = 0; i < fp8.size(); ++i) fp8[i] = std::byte(static_cast<uint8_t>(i * 37 % 0x7e));  // finite codes
  const std::vector<std::byte> e8m0 = {std::byte(127 - 6), std::byte(127 + 2)};  // [2, 1]: 2^-6, 2^2
  const std::string fp8_file = Write("v4_fp8.safetensors", {{shared, "F8_E4M3", {160, 96}, fp8},
                                                             {shared_scale, "F8_E8M0", {2, 1}, e8m0}});
  checkpoint = Checkpoint::Open(fp8_file);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(*checkpoint->MatrixFormat(shared), WeightFormat::kFP8Block);
  absl::StatusOr<StoredMatrix> read = checkpoint->ReadMatrix(shared, 160, 96);
  ASSERT_TRUE(read.ok()) << read.status();
  const Tensor dense = read->ToTensor();
  for (int64_t r : {0, 127, 128, 159}) {
    for (int64_t c : {0, 95}) {
      const float want = Fp8E4M3ToFloat(static_cast<uint8_t>(fp8[r * 96 + c])) * (r < 128 ? 1.0f / 64 : 4.0f);
      EXPECT_EQ(dense.values[r * 96 + c], want) << r << ", " << c;
    }
  }
  // The E8M0 NaN (0xff) is refused by its place.
  const std::string nan_file = Write("v4_nan.safetensors", {{shared, "F8_E4M3", {160, 96}, fp8},
                                                             {shared_scale, "F8_E8M0", {2, 1}, {e8m0[0], std::byte(0xff)}}});
  checkpoint = Checkpoint::Open(nan_file);
  ASSERT_TRUE(checkpoint.ok());
  EXPECT_THAT(std::string(checkpoint->ReadMatrix(shared, 160, 96).status().message()),
              HasSubstr("tensor '" + shared_scale + "' holds the E8M0 NaN (0xff) at index 1"));
}

// Token ids and token tables: I64 or I32, read as int64.
TEST_F(StoredCheckpointTest, IntegerTensorsReadAsInt64) {
  std::vector<std::byte> i64(3 * 8), i32(3 * 4);
  const int64_t wide[3] = {5, -1, int64_t{1} << 40};
  const int32_t narrow[3] = {7, 0, -3};
  std::memcpy(i64.data(), wide, sizeof(wide));
  std::memcpy(i32.data(), narrow, sizeof(narrow));
  const std::string file = Write("ids.safetensors", {{"wide", "I64", {3}, i64}, {"narrow", "I32", {3}, i32},
                                                      {"float", "F32", {3}, i32}});
  absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(file);
  ASSERT_TRUE(checkpoint.ok());
  EXPECT_EQ(*checkpoint->ReadIntegers("wide"), (std::vector<int64_t>{5, -1, int64_t{1} << 40}));
  EXPECT_EQ(*checkpoint->ReadIntegers("narrow", {3}), (std::vector<int64_t>{7, 0, -3}));
  EXPECT_THAT(std::string(checkpoint->ReadIntegers("narrow", {1, 3}).status().message()),
              HasSubstr("tensor 'narrow' has shape [3], the model needs [1, 3]"));
  EXPECT_THAT(std::string(checkpoint->ReadIntegers("float").status().message()),
              HasSubstr("tensor 'float' is F32; moex reads it as I64 or I32"));
}

TEST_F(StoredCheckpointTest, WrongFilesAreRefusedNamingTheTensorAndTheFile) {
  const std::string name = "model.layers.3.mlp.experts.0.up_proj.weight";
  absl::StatusOr<StoredMatrix> fp8 = StoredMatrix::Quantize(Values(128, 256), WeightFormat::kFP8Block);
  ASSERT_TRUE(fp8.ok());
  std::vector<RawTensor> good = Stored(name, *fp8);
  auto error = [&](const std::string& file_name, std::vector<RawTensor> tensors, int64_t rows = 128,
                   int64_t cols = 256) {
    const std::string file = Write(file_name, tensors);
    absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(file);
    if (!checkpoint.ok()) return std::string(checkpoint.status().message());
    return std::string(checkpoint->ReadMatrix(name, rows, cols).status().message());
  };
  // No block scales.
  EXPECT_THAT(error("no_scales.safetensors", {good[0]}),
              HasSubstr("tensor '" + name + "' is F8_E4M3 but the checkpoint has no '" + name + "_scale_inv'"));
  // Block scales of the wrong shape.
  RawTensor wrong_shape = good[1];
  wrong_shape.shape = {2, 1};
  EXPECT_THAT(error("scale_shape.safetensors", {good[0], wrong_shape}),
              HasSubstr("tensor '" + name + "_scale_inv' has shape [2, 1], the model needs [1, 2]"));
  // A corrupt scale: NaN, then zero.
  RawTensor corrupt = good[1];
  const float nan = std::nanf("");
  std::memcpy(corrupt.bytes.data() + 4, &nan, 4);
  EXPECT_THAT(error("nan_scale.safetensors", {good[0], corrupt}),
              HasSubstr("'" + name + "_scale_inv' holds nan at [0, 1]; a block scale must be finite and positive"));
  const float zero = 0;
  std::memcpy(corrupt.bytes.data() + 4, &zero, 4);
  EXPECT_THAT(error("zero_scale.safetensors", {good[0], corrupt}), HasSubstr("holds 0 at [0, 1]"));
  // The matrix the model needs is another shape.
  EXPECT_THAT(error("shape.safetensors", good, 256, 128),
              HasSubstr("tensor '" + name + "' has shape [128, 256], the model needs [256, 128]"));
  // A dtype moex does not hold weights in.
  RawTensor ints = good[0];
  ints.dtype = "I16";
  ints.shape = {128, 128};
  EXPECT_THAT(error("i16.safetensors", {ints}),
              HasSubstr("tensor '" + name + "' is I16; moex holds expert weights in F32, BF16, F16, F8_E4M3"));
  // DeepSeek-V4's packed FP4 without its E8M0 scales.
  ints.dtype = "I8";
  ints.bytes.resize(128 * 128);
  EXPECT_THAT(error("i8.safetensors", {ints}),
              HasSubstr("tensor '" + name + "' is I8 (packed FP4, DeepSeek-V4) but the checkpoint has no "
                        "'model.layers.3.mlp.experts.0.up_proj.scale'"));
  // MXFP4 blocks without their scales.
  absl::StatusOr<StoredMatrix> fp4 = StoredMatrix::Quantize(Values(128, 256), WeightFormat::kMXFP4);
  ASSERT_TRUE(fp4.ok());
  EXPECT_THAT(error("mx.safetensors", {Stored(name, *fp4)[0]}),
              HasSubstr("has 'model.layers.3.mlp.experts.0.up_proj_blocks' (MXFP4) but not its scales"));
  // A shard cut short: its header promises bytes that are not there.
  const std::string file = Write("whole.safetensors", good);
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 100);
  absl::StatusOr<Checkpoint> cut = Checkpoint::Open(file);
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(std::string(cut.status().message()), HasSubstr("whole.safetensors"));
  EXPECT_THAT(std::string(cut.status().message()), HasSubstr("truncated file?"));
}

// One expert's matrix out of a tensor stacking every expert's (Llama 4 and
// gpt-oss [E, rows, cols], MXFP4 blocks too; DBRX [E * rows, cols]).
TEST_F(StoredCheckpointTest, AStackedTensorGivesEachExpertItsOwnSlice) {
  const int64_t experts = 3, rows = 4, cols = 64;
  std::vector<StoredMatrix> each;
  for (int64_t e = 0; e < experts; ++e) {
    Tensor t = Values(rows, cols);
    for (float& v : t.values) v += static_cast<float>(e);  // tell the experts apart
    each.push_back(*StoredMatrix::Quantize(t, WeightFormat::kMXFP4));
  }
  auto cat = [&](bool scales) {
    std::vector<std::byte> out;
    for (const StoredMatrix& m : each) {
      const std::byte* from = scales ? m.scales : m.values;
      out.insert(out.end(), from, from + (scales ? m.scale_bytes() : m.value_bytes()));
    }
    return out;
  };
  Tensor flat({experts * rows, cols});
  for (int64_t e = 0; e < experts; ++e) {
    const Tensor t = each[e].ToTensor();
    std::copy(t.values.begin(), t.values.end(), flat.values.begin() + e * rows * cols);
  }
  std::vector<std::byte> flat_bytes(flat.size() * 4);
  std::memcpy(flat_bytes.data(), flat.data(), flat_bytes.size());
  const std::string file = Write("stacked.safetensors",
                                 {{"experts.gate_up_proj_blocks", "U8", {experts, rows, cols / 32, 16}, cat(false)},
                                  {"experts.gate_up_proj_scales", "U8", {experts, rows, cols / 32}, cat(true)},
                                  {"experts.mlp.w1", "F32", {experts * rows, cols}, flat_bytes}});
  absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(file);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  for (int64_t e = 0; e < experts; ++e) {
    SCOPED_TRACE(e);
    absl::StatusOr<StoredMatrix> m =
        checkpoint->ReadMatrix("experts.gate_up_proj", rows, cols, true, StackedSlice{.index = e, .count = experts});
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->format, WeightFormat::kMXFP4);
    EXPECT_EQ(m->ToTensor().values, each[e].ToTensor().values);
    absl::StatusOr<StoredMatrix> w1 =
        checkpoint->ReadMatrix("experts.mlp.w1", rows, cols, false, StackedSlice{.index = e, .count = experts});
    ASSERT_TRUE(w1.ok()) << w1.status();
    EXPECT_EQ(w1->ToTensor().values, each[e].ToTensor().values);
  }
  // A count that does not match the tensor is an error naming both shapes.
  absl::StatusOr<StoredMatrix> wrong =
      checkpoint->ReadMatrix("experts.mlp.w1", rows, cols, false, StackedSlice{.index = 0, .count = 4});
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("has shape [12, 64], the model needs [4, 4, 64]"));
  EXPECT_FALSE(checkpoint->ReadMatrix("experts.mlp.w1", rows, cols, false, StackedSlice{.index = 3, .count = 3}).ok());
}

}  // namespace
}  // namespace moex::model
