// One exception type for the kernels; the N-API layer maps `kind` to the JS error class.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>
#include <cstdint>

namespace lorakit {

enum class ErrorKind { Type, Range, State, Generic };

struct Error : std::runtime_error {
  ErrorKind kind;
  Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); i++) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

[[noreturn]] inline void throw_type(const std::string& m) { throw Error(ErrorKind::Type, m); }
[[noreturn]] inline void throw_range(const std::string& m) { throw Error(ErrorKind::Range, m); }
[[noreturn]] inline void throw_state(const std::string& m) { throw Error(ErrorKind::State, m); }

}  // namespace lorakit
