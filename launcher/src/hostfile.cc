#include "moex/launcher/hostfile.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "moex/core/echo.h"
#include "moex/core/str_cat.h"

namespace moex::launcher {

absl::Status ValidateHostName(std::string_view host) {
  bool ok = !host.empty() && host.size() <= 253 && std::isalnum(static_cast<unsigned char>(host[0]));
  for (char c : host) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  if (!ok) return absl::InvalidArgumentError(StrCat("'", Echo(host), "' is not a host name ([A-Za-z0-9][A-Za-z0-9._-]*)"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<HostSlots>> ParseHostfile(std::string_view text, const std::string& path) {
  std::vector<HostSlots> hosts;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++number;
    line = line.substr(0, line.find('#'));
    std::vector<absl::string_view> words = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    auto bad = [&](const auto& why) {
      return absl::InvalidArgumentError(StrCat("hostfile ", path, " line ", number, ": ", why));
    };
    HostSlots entry;
    entry.host = std::string(words[0]);
    if (absl::Status name = ValidateHostName(entry.host); !name.ok()) return bad(name.message());
    for (size_t i = 1; i < words.size(); ++i) {
      absl::string_view word = words[i];
      int value = 0;
      const size_t eq = word.find('=');
      const absl::string_view key = word.substr(0, eq);
      if (eq == absl::string_view::npos || !absl::SimpleAtoi(word.substr(eq + 1), &value) || value < 1 ||
          value > 4096) {
        return bad(StrCat("'", word, "' is not slots=N or max_slots=N with N in [1, 4096]"));
      }
      if (key == "slots") {
        entry.slots = value;
      } else if (key != "max_slots" && key != "max-slots") {
        return bad(StrCat("unknown field '", key, "' (known: slots, max_slots)"));
      }
    }
    for (const HostSlots& seen : hosts) {
      if (seen.host == entry.host) return bad(StrCat("host '", entry.host, "' is listed twice"));
    }
    hosts.push_back(std::move(entry));
  }
  if (hosts.empty()) return absl::InvalidArgumentError(StrCat("hostfile ", path, " names no host"));
  return hosts;
}

absl::StatusOr<std::vector<HostSlots>> ReadHostfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("cannot read the hostfile ", path, ": ", std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().size() > (1 << 20)) return absl::InvalidArgumentError(StrCat("hostfile ", path, " is over 1 MiB"));
  return ParseHostfile(text.str(), path);
}

std::string FormatHostfile(const std::vector<HostSlots>& hosts) {
  std::string text;
  for (const HostSlots& h : hosts) text += h.slots > 0 ? StrCat(h.host, " slots=", h.slots, "\n") : StrCat(h.host, "\n");
  return text;
}

absl::Status WriteHostfile(const std::string& path, const std::vector<HostSlots>& hosts) {
  const std::string temporary = StrCat(path, ".tmp");
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::PermissionDeniedError(StrCat("cannot write ", temporary, ": ", std::strerror(errno)));
  const std::string text = FormatHostfile(hosts);
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  if (!written || rename(temporary.c_str(), path.c_str()) != 0) {
    unlink(temporary.c_str());
    return absl::InternalError(StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

bool SameHost(std::string_view a, std::string_view b) {
  if (a == b) return true;
  if (a.find('.') != std::string_view::npos) std::swap(a, b);  // a: the one without a domain, if any
  return a.find('.') == std::string_view::npos && b.size() > a.size() && b.substr(0, a.size()) == a && b[a.size()] == '.';
}

absl::StatusOr<std::vector<HostSlots>> SelectHosts(const std::vector<HostSlots>& all,
                                                   const std::vector<std::string>& only,
                                                   const std::vector<std::string>& exclude) {
  auto named = [](const std::vector<std::string>& names, const std::string& host) {
    return std::any_of(names.begin(), names.end(), [&](const std::string& name) { return SameHost(name, host); });
  };
  for (const std::string& host : only) {
    if (std::none_of(all.begin(), all.end(), [&](const HostSlots& h) { return SameHost(h.host, host); })) {
      std::string known;
      for (const HostSlots& h : all) known += (known.empty() ? "" : ", ") + h.host;
      return absl::InvalidArgumentError(StrCat("host '", host, "' is not in the hostfile (it has ", known, ")"));
    }
  }
  std::vector<HostSlots> kept;
  for (const HostSlots& h : all) {
    if (!only.empty() && !named(only, h.host)) continue;
    if (named(exclude, h.host)) continue;
    kept.push_back(h);
  }
  return kept;
}

}  // namespace moex::launcher
