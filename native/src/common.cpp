// common.cpp — small shared helpers.
#include "common.h"

#include <cstdarg>
#include <cstdio>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace lkv {

std::string strprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string out(n > 0 ? (size_t)n : 0, '\0');
  if (n > 0) std::vsnprintf(&out[0], (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  return out;
}

void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace lkv
