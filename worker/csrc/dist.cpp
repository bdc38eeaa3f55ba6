// Data-parallel training through PyTorch's own c10d, as torch.distributed and DDP use it:
// TCPStore rendezvous, ProcessGroupGloo (ProcessGroupNCCL with SEED_NCCL), c10d::Reducer for the
// bucketed gradient all-reduce that overlaps backward, and SyncBatchNorm as a C++ autograd function.
//
// Every entry point catches C++ exceptions (c10d timeouts, closed peers, bad arguments) and returns
// them as a message, so a failed collective becomes a Rust error instead of an abort.
// Tensors cross the boundary as tch's `C_tensor*`, which is `at::Tensor*` (torch-sys torch_api.h).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef SEED_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <memory>
#include <string>
#include <vector>

static thread_local std::string last_error;

extern "C" const char *seeddist_last_error() { return last_error.c_str(); }

#define GUARD_BEGIN try {
#define GUARD_END(fail)                                                                            \
  }                                                                                                \
  catch (const std::exception &e) {                                                                \
    last_error = e.what();                                                                         \
    return fail;                                                                                   \
  }                                                                                                \
  catch (...) {                                                                                    \
    last_error = "unknown C++ exception";                                                          \
    return fail;                                                                                   \
  }

struct Dist {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::unique_ptr<c10d::Reducer> reducer;
  int rank;
  int world;
};

static std::vector<at::Tensor> tensors(at::Tensor **ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

// `agent_store`: under torchrun with TORCHELASTIC_USE_AGENT_STORE the launcher already serves the
// TCPStore on master_port, so every rank is a client (as Python's env:// rendezvous does).
// Every group's backend for host tensors: Gloo, keyed under its own store prefix as PyTorch's
// `cpu:gloo,cuda:nccl` does. One function for both groups, so the Gloo half of an NCCL group is
// built exactly as the Gloo group every CPU test runs.
static c10::intrusive_ptr<c10d::ProcessGroupGloo> host_backend(
    const c10::intrusive_ptr<c10d::Store> &store, int rank, int world,
    std::chrono::milliseconds timeout) {
  return c10::make_intrusive<c10d::ProcessGroupGloo>(
      c10::make_intrusive<c10d::PrefixStore>("cpu/", store), rank, world,
      c10d::ProcessGroupGloo::Options::create_default(timeout));
}

extern "C" void *seeddist_init(const char *host, int port, int rank, int world, int agent_store,
                               const char *backend, int64_t timeout_ms, int device_index) {
  GUARD_BEGIN
  auto timeout = std::chrono::milliseconds(timeout_ms);
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = rank == 0 && !agent_store;
  opts.numWorkers = world;
  opts.timeout = timeout;
  auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
  // The prefix keeps our keys apart from those of the launcher's own use of the store.
  auto store = c10::make_intrusive<c10d::PrefixStore>("seed/default_pg", tcp);
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
  std::string b(backend);
  if (b == "gloo") {
    auto be = host_backend(store, rank, world, timeout);
    // Gloo also takes CUDA tensors (through host copies): two ranks can share one GPU.
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, be);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, be);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  } else if (b == "nccl") {
#ifdef SEED_NCCL
    auto o = c10::make_intrusive<c10d::ProcessGroupNCCL::Options>();
    o->timeout = timeout;
    // Each backend keys the store under its own prefix, as PyTorch's `cpu:gloo,cuda:nccl` does.
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        c10::make_intrusive<c10d::PrefixStore>("cuda/", store), rank, world, o);
    // NCCL carries CUDA tensors only; the trainer's control collectives (the start and stop votes,
    // the evaluation's gather, the replicas' spread) use small host tensors: Gloo takes those.
    auto gloo = host_backend(store, rank, world, timeout);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    (void)device_index;
#else
    throw std::runtime_error(
        "this worker was built without NCCL (cargo feature `nccl`); use --dist-backend gloo");
#endif
  } else {
    throw std::runtime_error("unknown backend " + b + " (gloo or nccl)");
  }
  auto d = new Dist{store, pg, nullptr, rank, world};
  return d;
  GUARD_END(nullptr)
}

extern "C" void seeddist_destroy(void *h) {
  auto d = static_cast<Dist *>(h);
  try {
    d->reducer.reset();
    d->pg->shutdown();
  } catch (...) {
    // Shutting down after a peer died may throw; the process is leaving anyway.
  }
  delete d;
}

// Runs `op` on one flat buffer per run of same-dtype, same-device tensors (one message instead of
// one per tensor; gloo's broadcast takes a single tensor anyway), then copies the results back.
template <typename Op>
static void flat_runs(std::vector<at::Tensor> &v, Op op) {
  size_t i = 0;
  while (i < v.size()) {
    size_t j = i;
    std::vector<at::Tensor> parts;
    while (j < v.size() && v[j].scalar_type() == v[i].scalar_type() &&
           v[j].device() == v[i].device()) {
      parts.push_back(v[j].reshape({-1}));
      j++;
    }
    std::vector<at::Tensor> flat{parts.size() == 1 ? v[i] : at::cat(parts)};
    op(flat);
    if (parts.size() > 1) {
      int64_t off = 0;
      for (size_t k = i; k < j; k++) {
        v[k].copy_(flat[0].narrow(0, off, v[k].numel()).view(v[k].sizes()));
        off += v[k].numel();
      }
    }
    i = j;
  }
}

// In-place sum over ranks of n tensors.
extern "C" int seeddist_allreduce_sum(void *h, at::Tensor **ts, size_t n) {
  GUARD_BEGIN
  auto d = static_cast<Dist *>(h);
  auto v = tensors(ts, n);
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  flat_runs(v, [&](std::vector<at::Tensor> &flat) { d->pg->allreduce(flat, o)->wait(); });
  return 0;
  GUARD_END(-1)
}

// Overwrites n tensors on every rank with root's values.
extern "C" int seeddist_broadcast(void *h, at::Tensor **ts, size_t n, int root) {
  GUARD_BEGIN
  auto d = static_cast<Dist *>(h);
  auto v = tensors(ts, n);
  c10d::BroadcastOptions o;
  o.rootRank = root;
  flat_runs(v, [&](std::vector<at::Tensor> &flat) { d->pg->broadcast(flat, o)->wait(); });
  return 0;
  GUARD_END(-1)
}

// Every rank's `input`, stacked along a new first dimension (same shape on every rank).
extern "C" at::Tensor *seeddist_allgather(void *h, at::Tensor *input) {
  GUARD_BEGIN
  auto d = static_cast<Dist *>(h);
  std::vector<at::Tensor> in{input->contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < d->world; r++) out[0].push_back(at::empty_like(in[0]));
  d->pg->allgather(out, in)->wait();
  return new at::Tensor(at::stack(out[0]));
  GUARD_END(nullptr)
}

extern "C" int seeddist_barrier(void *h) {
  GUARD_BEGIN
  static_cast<Dist *>(h)->pg->barrier()->wait();
  return 0;
  GUARD_END(-1)
}

// PyTorch DDP's reducer over these parameters: autograd hooks mark gradients ready during
// backward, full buckets are all-reduced asynchronously while backward goes on, and the averaged
// gradients are written back into `.grad` before backward returns. Buckets as DDP's defaults:
// a 1 MiB first bucket, then `bucket_mb`, in reverse registration order; rebuilt after the first
// step from the order gradients actually arrived in.
extern "C" int seeddist_reducer_new(void *h, at::Tensor **ts, size_t n, int64_t bucket_mb) {
  GUARD_BEGIN
  auto d = static_cast<Dist *>(h);
  auto params = tensors(ts, n);
  int64_t cap = bucket_mb * 1024 * 1024;
  int64_t first = 1024 * 1024;
  std::vector<bool> sparse(params.size(), false);
  auto [buckets, limits] =
      c10d::compute_bucket_assignment_by_size(params, {static_cast<size_t>(first), static_cast<size_t>(cap)}, sparse);
  std::reverse(buckets.begin(), buckets.end());
  std::vector<int64_t> limit_list(limits.rbegin(), limits.rend());
  std::unordered_map<size_t, std::string> names;
  d->reducer = std::make_unique<c10d::Reducer>(params, buckets, d->pg, sparse, cap,
                                               /*find_unused_parameters=*/false,
                                               /*gradient_as_bucket_view=*/false, names, first,
                                               /*skip_all_reduce_unused_params=*/false,
                                               /*use_python_reducer=*/false, limit_list);
  return 0;
  GUARD_END(-1)
}

// Call before each training forward: what DDP's forward does around the model call.
extern "C" int seeddist_reducer_prepare(void *h) {
  GUARD_BEGIN
  auto d = static_cast<Dist *>(h);
  if (!d->reducer) throw std::runtime_error("no reducer");
  d->reducer->rebuild_buckets();
  d->reducer->prepare_for_backward({});
  return 0;
  GUARD_END(-1)
}

// SyncBatchNorm (training mode): the batch statistics of the global batch, all ranks together, and
// the matching gradient. The math is torch.nn.SyncBatchNorm's; written with plain ATen ops because
// the fused batch_norm_stats/_elemt kernels PyTorch uses exist only for CUDA.
struct SyncBN : public torch::autograd::Function<SyncBN> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, at::Tensor x, at::Tensor w,
                            at::Tensor b, at::Tensor running_mean, at::Tensor running_var,
                            double momentum, double eps, int64_t handle) {
    auto d = reinterpret_cast<Dist *>(handle);
    const int64_t c = x.size(1);
    std::vector<int64_t> dims{0};
    for (int64_t i = 2; i < x.dim(); i++) dims.push_back(i);
    std::vector<int64_t> shape(x.dim(), 1);
    shape[1] = c;
    // Statistics in at least fp32 (bf16/fp16 activations under autocast), in fp64 for fp64 input.
    auto acc = at::promote_types(x.scalar_type(), at::kFloat);
    auto xf = x.to(acc);
    // Local mean and sum of squared deviations, combined across ranks with Chan's formula:
    // stable where sum and sum of squares would cancel.
    auto [var_l, mean_l] = at::var_mean(xf, dims, /*correction=*/0, /*keepdim=*/false);
    const double count_l = static_cast<double>(x.numel() / c);
    auto local = at::cat({mean_l.to(at::kDouble), (var_l * count_l).to(at::kDouble),
                          at::full({1}, count_l, mean_l.options().dtype(at::kDouble))});
    std::vector<at::Tensor> in{local};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < d->world; r++) out[0].push_back(at::empty_like(local));
    d->pg->allgather(out, in)->wait();
    auto all = at::stack(out[0]);  // [world, 2C+1]
    auto means = all.narrow(1, 0, c), m2s = all.narrow(1, c, c), counts = all.narrow(1, 2 * c, 1);
    auto n = counts.sum();
    auto mean = (means * counts).sum(0) / n;
    auto m2 = (m2s + counts * (means - mean).pow(2)).sum(0);
    const double total = n.item<double>();
    auto var = m2 / total;
    auto invstd = (var + eps).rsqrt();
    {
      at::NoGradGuard g;
      auto unbiased = m2 / std::max(total - 1.0, 1.0);
      running_mean.mul_(1 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1 - momentum).add_(unbiased.to(running_var.scalar_type()), momentum);
    }
    auto meanf = mean.to(acc), invstdf = invstd.to(acc);
    ctx->save_for_backward({xf, w, meanf, invstdf});
    ctx->saved_data["total"] = total;
    ctx->saved_data["handle"] = handle;
    auto y = (xf - meanf.view(shape)) * (invstdf * w.to(acc)).view(shape) + b.to(acc).view(shape);
    return y.to(x.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto xf = saved[0], w = saved[1], mean = saved[2], invstd = saved[3];
    auto d = reinterpret_cast<Dist *>(ctx->saved_data["handle"].toInt());
    const double total = ctx->saved_data["total"].toDouble();
    auto dy = grads[0].to(xf.scalar_type());
    const int64_t c = xf.size(1);
    std::vector<int64_t> dims{0};
    for (int64_t i = 2; i < xf.dim(); i++) dims.push_back(i);
    std::vector<int64_t> shape(xf.dim(), 1);
    shape[1] = c;
    auto xmu = xf - mean.view(shape);
    auto sum_dy = dy.sum(dims);
    auto sum_dy_xmu = (dy * xmu).sum(dims);
    // Weight and bias gradients stay local: the reducer averages them like every other gradient.
    auto grad_w = (sum_dy_xmu * invstd).to(w.scalar_type());
    auto grad_b = sum_dy.clone().to(w.scalar_type());
    std::vector<at::Tensor> both{at::cat({sum_dy, sum_dy_xmu})};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    d->pg->allreduce(both, o)->wait();
    auto g_dy = both[0].narrow(0, 0, c) / total;
    auto g_dy_xmu = both[0].narrow(0, c, c) / total;
    auto grad_x = (dy - g_dy.view(shape) - xmu * (invstd * invstd * g_dy_xmu).view(shape)) *
                  (invstd * w.to(xf.scalar_type())).view(shape);
    return {grad_x.to(grads[0].scalar_type()), grad_w, grad_b, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

extern "C" at::Tensor *seeddist_sync_batch_norm(void *h, at::Tensor *x, at::Tensor *w,
                                                at::Tensor *b, at::Tensor *running_mean,
                                                at::Tensor *running_var, double momentum,
                                                double eps) {
  GUARD_BEGIN
  auto y = SyncBN::apply(*x, *w, *b, *running_mean, *running_var, momentum, eps,
                         reinterpret_cast<int64_t>(h));
  return new at::Tensor(y);
  GUARD_END(nullptr)
}
