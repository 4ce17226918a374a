// XLA FFI handler "awt_sgemm": a float32 matrix product through a CBLAS
// sgemm (MKL's, set at load time by awt/models/_cpu_gemm.py), split over
// XLA:CPU's intra-op thread pool.
//
// Operands are row-major, with equal leading batch dimensions:
//   a: [..., m, k] (or [..., k, m] when transpose_a)
//   b: [..., k, n] (or [..., n, k] when transpose_b)
//   c: [..., m, n] = op(a) @ op(b), one sgemm per batch element and part.
//
// MKL runs sequentially (no OpenMP team of its own competing with XLA's
// threads); each product is cut into as many column (or row) blocks as the
// pool has threads, and the calling thread and the pool's claim blocks from
// a shared counter. The caller never waits on a block nobody has claimed,
// so a pool whose threads are all inside such calls cannot deadlock.
// Built and loaded by _cpu_gemm.py; see that module for the reasons.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
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
  for (int64_t i = 1; i < std::min(total, threads); ++i) {
    pool.Schedule([job] { job->Drain(); });
  }
  job->Drain();
  // Every block is claimed; wait for those other threads are running.
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
