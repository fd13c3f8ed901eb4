// absl::StrCat that also takes std::string_view.
//
// Debian 12 builds Abseil with its own absl::string_view
// (ABSL_OPTION_USE_STD_STRING_VIEW 0), which absl::StrCat accepts but
// std::string_view does not convert to. moex code uses std::string_view, so
// it concatenates through these two functions.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace moex {
namespace str_cat_internal {

template <typename T>
decltype(auto) Adapt(const T& value) {
  if constexpr (std::is_same_v<T, std::string_view>) {
    return absl::string_view(value.data(), value.size());
  } else {
    return (value);
  }
}

}  // namespace str_cat_internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  return absl::StrCat(str_cat_internal::Adapt(args)...);
}

template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  absl::StrAppend(out, str_cat_internal::Adapt(args)...);
}

}  // namespace moex
