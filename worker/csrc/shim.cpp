// Pieces of libtorch that tch 0.24 does not expose. Every entry point catches C++ exceptions and
// returns them as a message, so a libtorch error becomes a Rust error instead of an abort.
#include <ATen/autocast_mode.h>
#include <string>
#include <cstring>

static thread_local std::string last_error;

extern "C" const char *seedshim_last_error() { return last_error.c_str(); }

// tch::autocast only offers CUDA fp16. The study-faithful default is fp32; `--bf16` turns on CUDA
// autocast to bfloat16 (the dtype PyTorch users pick on Hopper-class GPUs: no loss scaling needed).
extern "C" int seedshim_set_autocast_bf16(int enabled) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, enabled != 0);
    if (!enabled) at::autocast::clear_cache();
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}
