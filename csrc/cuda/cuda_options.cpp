// Reads the CUDA backend's environment once (cuda_options.h says which variables and why).
#include "cuda_options.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace sgcvq::gpu {
namespace {

struct Parsed {
  CudaOptions options;
  std::string error;
};

Parsed parse() {
  Parsed p;
  const char* sm90 = std::getenv("SGCVQ_CUDA_SM90");
  if (sm90 != nullptr && *sm90 != '\0') {
    if (std::strcmp(sm90, "1") == 0) p.options.sm90 = true;
    else if (std::strcmp(sm90, "0") != 0) p.error = std::string("SGCVQ_CUDA_SM90 must be '1' or '0', got '") + sm90 + "'";
  }
  return p;
}

const Parsed& parsed() {
  static const Parsed p = parse();  // once per process: thread-safe static initialisation
  return p;
}

}  // namespace

const CudaOptions& cuda_options() { return parsed().options; }

const char* cuda_options_error() { return parsed().error.c_str(); }

}  // namespace sgcvq::gpu
