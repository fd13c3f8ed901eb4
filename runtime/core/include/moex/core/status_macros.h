// Small Status helpers. Debian 12's Abseil (20220623) has no public
// RETURN_IF_ERROR / ASSIGN_OR_RETURN, so moex carries its own.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MOEX_STATUS_CONCAT_INNER(a, b) a##b
#define MOEX_STATUS_CONCAT(a, b) MOEX_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` is not OK.
#define MOEX_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::absl::Status moex_status_ = (expr);          \
    if (!moex_status_.ok()) return moex_status_;   \
  } while (false)

// `lhs = value of expr`, or returns the error of `expr`.
#define MOEX_ASSIGN_OR_RETURN(lhs, expr) \
  MOEX_ASSIGN_OR_RETURN_IMPL(MOEX_STATUS_CONCAT(moex_statusor_, __LINE__), lhs, expr)

#define MOEX_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()
