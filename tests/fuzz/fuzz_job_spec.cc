// The job-spec validator, as SubmitJob runs it on what a client sends: the
// bytes are a JobSpec in protobuf text format (the seeds) or, when they do
// not parse as one, in the binary wire format.
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "moex/cluster/spec_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  moex::v1::JobSpec spec;
  google::protobuf::TextFormat::Parser parser;
  parser.AllowPartialMessage(true);
  struct Quiet : google::protobuf::io::ErrorCollector {
    void AddError(int, int, const std::string&) override {}
  } quiet;
  parser.RecordErrorsTo(&quiet);
  if (!parser.ParseFromString(bytes, &spec) && !spec.ParseFromString(bytes)) return 0;
  (void)moex::cluster::ValidateAndNormalise(&spec, moex::cluster::SpecLimits{.max_world_size = 64});
  return 0;
}
