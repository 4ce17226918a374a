// XLA FFI handler "awt_sgemm": a float32 matrix product through a CBLAS
// sgemm (MKL's, set at load time by awt/models/_cpu_gemm.py), split over
// the calling thread and the handler's helper threads.
//
// Operands are row-major, with equal leading batch dimensions:
//   a: [..., m, k] (or [..., k, m] when transpose_a)
//   b: [..., k, n] (or [..., n, k] when transpose_b)
//   c: [..., m, n] = op(a) @ op(b), one sgemm per batch element and part.
//
// MKL runs sequentially (no OpenMP team of its own competing with XLA's
// threads); each product is cut into as many column (or row) blocks as
// XLA:CPU's intra-op pool has threads, and the calling thread and this
// file's helper threads (one fewer than the pool's) claim blocks from a
// shared counter. The caller never waits on a block nobody has claimed, so
// whatever the helpers do, every product completes, and concurrent callers
// need no lock between them.
//
// Why helpers of our own rather than the pool's threads: between two
// products of a PGD step XLA runs a few small element-wise ops, long
// enough for the pool's threads to fall asleep, and waking one took long
// enough that the caller often ran every block itself. A helper spins for
// kSpin after a product, yielding its core to any other runnable thread on
// every turn, and only then sleeps; OpenMP runtimes do the same
// (KMP_BLOCKTIME). Measured on the MLP's PGD-10 step (benchmarks/README.md,
// 2026-12-06): 1.03-1.25x faster than blocks on the pool, 8 of 8 pairs.
// Built and loaded by _cpu_gemm.py; see that module for the reasons.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
//             beta, c, ldc)
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int,
                       const float*, int, float, float*, int);

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

// Products below this many FLOPs run as one block: splitting costs more.
constexpr double kMinSplitFlops = 4e5;

// Blocks are a multiple of this many columns (rows), whole SIMD panels.
constexpr int64_t kBlockAlign = 16;

Sgemm sgemm = nullptr;

struct Job {
  const float* a;
  const float* b;
  float* c;
  bool ta, tb, split_n;
  int64_t m, n, k, lda, ldb, batch, blocks, block;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run(int64_t task) const {
    int64_t i = task / blocks;
    int64_t lo = (task % blocks) * block;
    int64_t hi = std::min(lo + block, split_n ? n : m);
    if (lo >= hi) return;
    const float* pa = a + i * m * k;
    const float* pb = b + i * k * n;
    float* pc = c + i * m * n;
    int op_a = ta ? kTrans : kNoTrans;
    int op_b = tb ? kTrans : kNoTrans;
    if (split_n) {
      sgemm(kRowMajor, op_a, op_b, m, hi - lo, k, 1.0f, pa, lda,
            pb + (tb ? lo * ldb : lo), ldb, 0.0f, pc + lo, n);
    } else {
      sgemm(kRowMajor, op_a, op_b, hi - lo, n, k, 1.0f,
            pa + (ta ? lo : lo * lda), lda, pb, ldb, 0.0f, pc + lo * n, n);
    }
  }

  // Claims and runs blocks until none is left.
  void Drain() {
    const int64_t total = batch * blocks;
    for (int64_t t; (t = next.fetch_add(1)) < total;) {
      Run(t);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Threads that run blocks of the latest posted Job; see the file comment.
// One process-wide set, created on the first split product and never
// destroyed (its threads are detached).
class Helpers {
 public:
  explicit Helpers(int64_t n) {
    for (int64_t i = 0; i < n; ++i) std::thread([this] { Loop(); }).detach();
  }

  // Offers `job` to the helpers; a later Post replaces it.
  void Post(std::shared_ptr<Job> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = std::move(job);
      posted_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) wake_.notify_all();
  }

 private:
  static constexpr std::chrono::microseconds kSpin{2000};

  void Loop() {
    uint64_t seen = posted_.load(std::memory_order_acquire);
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      while (posted_.load(std::memory_order_acquire) == seen) {
        if (std::chrono::steady_clock::now() - start > kSpin) {
          std::unique_lock<std::mutex> lock(mu_);
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] { return posted_.load() != seen; });
          sleepers_.fetch_sub(1);
          break;
        }
        std::this_thread::yield();
      }
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen = posted_.load();
        job = job_;
      }
      job->Drain();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> posted_{0};
  std::atomic<int> sleepers_{0};
  std::shared_ptr<Job> job_;
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                bool transpose_a, bool transpose_b) {
  if (sgemm == nullptr) {
    return ffi::Error::Internal("awt_sgemm: no sgemm was set");
  }
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  auto cd = c->dimensions();
  const size_t r = cd.size();
  if (r < 2 || ad.size() != r || bd.size() != r) {
    return ffi::Error::InvalidArgument("awt_sgemm: operands of unequal rank");
  }
  auto job = std::make_shared<Job>();
  job->a = a.typed_data();
  job->b = b.typed_data();
  job->c = c->typed_data();
  job->ta = transpose_a;
  job->tb = transpose_b;
  job->m = cd[r - 2];
  job->n = cd[r - 1];
  job->k = transpose_a ? ad[r - 2] : ad[r - 1];
  job->lda = ad[r - 1];
  job->ldb = bd[r - 1];
  job->batch = 1;
  for (size_t i = 0; i + 2 < r; ++i) job->batch *= cd[i];
  if (job->k == 0) {  // An empty sum; BLAS rejects a leading dimension of 0.
    std::fill_n(job->c, job->batch * job->m * job->n, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const double flops = 2.0 * job->m * job->n * job->k;
  job->blocks = flops < kMinSplitFlops ? 1 : threads;
  job->split_n = job->n >= job->m;
  const int64_t len = job->split_n ? job->n : job->m;
  job->block = (len + job->blocks - 1) / job->blocks;
  job->block = (job->block + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  const int64_t total = job->batch * job->blocks;
  if (total > 1) {
    static Helpers* const helpers = new Helpers(threads - 1);
    helpers->Post(job);
  }
  job->Drain();
  // Every block is claimed; wait for the ones helpers are still running.
  while (job->done.load(std::memory_order_acquire) < total) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" void awt_set_sgemm(void* f) { sgemm = reinterpret_cast<Sgemm>(f); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(AwtSgemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
