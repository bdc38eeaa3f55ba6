// Pieces of libtorch that tch 0.24 does not expose. Every entry point catches C++ exceptions and
// returns them as a message, so a libtorch error becomes a Rust error instead of an abort.
#include <ATen/autocast_mode.h>
#include <string>
#include <cstring>

static thread_local std::string last_error;

extern "C" const char *seedshim_last_error() { return last_error.c_str(); }

// tch::autocast only offers CUDA fp16. The study-faithful default is fp32; `--bf16` turns on
// autocast to bfloat16 (the dtype PyTorch users pick on Hopper-class GPUs: no loss scaling needed)
// for the device the work runs on: CUDA's, or the CPU's (`torch.autocast("cpu", torch.bfloat16)`).
extern "C" int seedshim_set_autocast_bf16(int enabled, int cuda) {
  try {
    const auto device = cuda != 0 ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::set_autocast_enabled(device, enabled != 0);
    if (!enabled) at::autocast::clear_cache();
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}

// `--tf32`: let cuBLAS matmuls and cuDNN convolutions use TF32 tensor cores (PyTorch's
// `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`). Off by default:
// the study ran fp32. Process-wide; a no-op for CPU work.
#include <ATen/Context.h>
extern "C" int seedshim_set_tf32(int enabled) {
  try {
    at::globalContext().setAllowTF32CuBLAS(enabled != 0);
    at::globalContext().setAllowTF32CuDNN(enabled != 0);
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}

// Counting ATen ops (`worker bench --ops`): a RecordFunction callback, the mechanism torch.profiler
// is built on. An op is top-level when no other aten:: op is running on its thread (the ops an
// op calls inside are its business, as in the profiler's tree); a blocking host-device sync is an
// `aten::_local_scalar_dense` (what `.item()` and `double_value` dispatch to) or an `aten::nonzero`
// (its output shape needs the device's answer), at any depth.
#include <ATen/record_function.h>
#include <atomic>
#include <map>
#include <mutex>

static std::atomic<long long> ops_top{0};
// Top-level ops by name, for `worker bench --op-names` (a mutex: counting is a diagnostic).
static std::mutex ops_names_mu;
static std::map<std::string, long long> ops_names;
static std::atomic<long long> ops_sync{0};
static thread_local int ops_depth = 0;
static at::CallbackHandle ops_handle = 0;

namespace {
struct IsAten : at::ObserverContext {};

std::unique_ptr<at::ObserverContext> ops_enter(const at::RecordFunction &fn) {
  const char *name = fn.name();
  if (name == nullptr || std::strncmp(name, "aten::", 6) != 0) return nullptr;
  if (ops_depth == 0) {
    ops_top.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(ops_names_mu);
    ops_names[name]++;
  }
  if (!std::strcmp(name, "aten::_local_scalar_dense") || !std::strcmp(name, "aten::nonzero"))
    ops_sync.fetch_add(1, std::memory_order_relaxed);
  ops_depth++;
  return std::make_unique<IsAten>();
}

void ops_exit(const at::RecordFunction &, at::ObserverContext *ctx) {
  if (ctx != nullptr) ops_depth--;
}
}  // namespace

// Starts counting from zero (all threads).
extern "C" int seedshim_ops_start() {
  try {
    ops_top = 0;
    ops_sync = 0;
    {
      std::lock_guard<std::mutex> lock(ops_names_mu);
      ops_names.clear();
    }
    if (ops_handle == 0) {
      ops_handle = at::addGlobalCallback(
          at::RecordFunctionCallback(ops_enter, ops_exit).scopes({at::RecordScope::FUNCTION}));
    }
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}

// Stops counting; the counts since the start.
extern "C" int seedshim_ops_stop(long long *top, long long *syncs) {
  try {
    if (ops_handle != 0) {
      at::removeCallback(ops_handle);
      ops_handle = 0;
    }
    *top = ops_top.load();
    *syncs = ops_sync.load();
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}

// The last count's top-level ops as "name<TAB>count" lines into `buf` (at most `cap` bytes, no NUL);
// returns the bytes the whole text needs, so a caller can size its buffer and ask again.
extern "C" long long seedshim_ops_names(char *buf, long long cap) {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(ops_names_mu);
    for (const auto &[name, n] : ops_names) text += name + "\t" + std::to_string(n) + "\n";
  }
  if (buf != nullptr && cap > 0)
    std::memcpy(buf, text.data(), std::min<size_t>(text.size(), static_cast<size_t>(cap)));
  return static_cast<long long>(text.size());
}

// The optimiser step PyTorch itself runs for SGD(momentum, weight_decay, fused=True): one
// multi-tensor kernel over every parameter (`at::_fused_sgd_`), instead of ~6 ops per parameter
// tensor. On the first step the kernel sets each momentum buffer to its gradient (plus weight
// decay), as torch.optim.SGD does; with momentum 0 there are no buffers (n_bufs 0).
#include <ATen/ATen.h>
#include <vector>

static std::vector<at::Tensor> tensor_list(at::Tensor **ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; i++) out.push_back(*ts[i]);
  return out;
}

// `found_inf` (may be null): a one-element float tensor on the parameters' device; when it holds 1
// the kernel leaves parameters and buffers alone (what GradScaler uses it for), decided on the
// device, with no host sync.
extern "C" int seedshim_fused_sgd(at::Tensor **params, at::Tensor **grads, int n, at::Tensor **bufs,
                                  int n_bufs, double weight_decay, double momentum, double lr,
                                  int first_step, at::Tensor *found_inf) {
  try {
    at::NoGradGuard no_grad;
    auto p = tensor_list(params, n);
    auto g = tensor_list(grads, n);
    auto b = tensor_list(bufs, n_bufs);
    std::optional<at::Tensor> skip;
    if (found_inf) skip = *found_inf;
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, /*dampening=*/0.0, /*nesterov=*/false,
                    /*maximize=*/false, first_step != 0, std::nullopt, skip);
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}

// `zero_grad(set_to_none=True)`: the next backward writes each gradient instead of adding to zeros.
extern "C" int seedshim_set_grads_none(at::Tensor **params, int n) {
  try {
    for (int i = 0; i < n; i++) params[i]->mutable_grad().reset();
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}
