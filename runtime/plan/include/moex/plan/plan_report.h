// Renders a Plan: JSON for machines (`moex plan --json`), a table for people.
// The JSON keys are part of moex's interface; docs/plan.md describes each.
#pragma once

#include <string>

#include "moex/plan/planner.h"
#include "nlohmann/json.hpp"

namespace moex::plan {

nlohmann::json PlanToJson(const Plan& plan);
std::string PlanToTable(const Plan& plan);

}  // namespace moex::plan
