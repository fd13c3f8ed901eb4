// How `moex job` prints what the controller answers: a job in words, any
// message as JSON.
#pragma once

#include <cstdint>
#include <string>

#include <google/protobuf/message.h>

#include "moex/v1/job.pb.h"

namespace moex::cli {

// "RUNNING" for JOB_STATE_RUNNING.
std::string StateName(moex::v1::JobState state);
// END_REASON_HOST_LOST -> "host_lost" (what `moex job status` prints).
std::string EndReasonName(moex::v1::EndReason reason);
// Local time of a record's milliseconds since the epoch; "-" for none.
std::string Time(int64_t ms);
// The message as JSON, with the proto's field names and every field.
std::string ToJson(const google::protobuf::Message& message);
// `moex job status`: the job, its ranks, figures, attempts and bench points.
void PrintJob(const moex::v1::Job& job);

}  // namespace moex::cli
