#include "moex/control/spec_validation.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::control {
namespace {

using ::testing::HasSubstr;

moex::v1::JobSpec Good() {
  moex::v1::JobSpec spec;
  spec.set_name("ok-job_1.2");
  spec.set_world_size(2);
  spec.set_model("tiny");
  spec.set_steps(3);
  spec.set_tokens_per_rank(16);
  return spec;
}

std::string ErrorOf(moex::v1::JobSpec spec) {
  absl::Status status = ValidateAndNormalise(&spec, SpecLimits{.max_world_size = 8});
  return status.ok() ? "" : std::string(status.message());
}

TEST(SpecValidationTest, GoodSpecGetsDefaults) {
  moex::v1::JobSpec spec = Good();
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(spec.transport(), "mpi");
}

TEST(SpecValidationTest, EveryBadFieldIsNamed) {
  auto with = [](auto change) {
    moex::v1::JobSpec spec = Good();
    change(spec);
    return ErrorOf(spec);
  };
  EXPECT_THAT(with([](auto& s) { s.set_name("rm -rf /"); }), HasSubstr("spec.name"));
  EXPECT_THAT(with([](auto& s) { s.set_name(""); }), HasSubstr("spec.name"));
  EXPECT_THAT(with([](auto& s) { s.set_world_size(9); }), HasSubstr("spec.world_size is 9; this controller allows 1 to 8"));
  EXPECT_THAT(with([](auto& s) { s.set_world_size(-1); }), HasSubstr("spec.world_size"));
  EXPECT_THAT(with([](auto& s) { s.set_steps(0); }), HasSubstr("spec.steps"));
  EXPECT_THAT(with([](auto& s) { s.set_tokens_per_rank(1 << 30); }), HasSubstr("spec.tokens_per_rank"));
  EXPECT_THAT(with([](auto& s) { s.set_transport("tcp"); }), HasSubstr("spec.transport is 'tcp'"));
  EXPECT_THAT(with([](auto& s) { s.set_routing_skew(1e9); }), HasSubstr("spec.routing_skew"));
  EXPECT_THAT(with([](auto& s) { s.set_model("/etc/passwd"); }), HasSubstr("spec.model cannot be read"));
  EXPECT_THAT(with([](auto& s) { s.set_model("gpt-oss-20b"); }), HasSubstr("not runnable"));
  EXPECT_THAT(with([](auto& s) { s.set_model("mini-dsv3"); s.set_layer(0); }), HasSubstr("spec.layer"));
  EXPECT_THAT(with([](auto& s) { s.set_world_size(8); s.set_model("tiny-dsv3"); s.set_redundant_experts(-1); }),
              HasSubstr("spec.redundant_experts"));
}

TEST(SpecValidationTest, WorldLargerThanTheExpertSlots) {
  moex::v1::JobSpec spec = Good();
  spec.set_world_size(16);
  absl::Status status = ValidateAndNormalise(&spec, SpecLimits{.max_world_size = 64});
  EXPECT_THAT(std::string(status.message()), HasSubstr("only 8 expert slots"));
}

}  // namespace
}  // namespace moex::control
