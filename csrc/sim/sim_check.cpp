// Standalone check of the CUDA simulator (sim/cuda_sim.h): kernels exercising every feature it
// provides, the failures it must report (in child processes), its coverage report and its speed.
// Exits 0 when everything checks. It includes common/block_reduce.cuh, whose header chain needs
// torch's include folder (headers only: nothing from torch is linked):
//   T=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
//   g++ -std=c++20 -O1 -g [-fsanitize=address] -Wno-unknown-pragmas -DOBJX_CUDA_SIM -Icsrc -isystem $T/include
//       csrc/sim/sim_check.cpp csrc/sim/cuda_sim.cpp -o /tmp/sim_check -lpthread && /tmp/sim_check
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/block_reduce.cuh"
#include "sim/selftest_kernels.cuh"

namespace demo {
struct Half {};  // a namespaced template argument, as c10::BFloat16 is in objx's kernels
}  // namespace demo

namespace {

using namespace objx::sim::selftest;

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

std::vector<float> random_rows(int64_t rows, int64_t cols, unsigned seed) {
  std::vector<float> x(rows * cols);
  unsigned s = seed;
  for (float& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(s >> 8) / static_cast<float>(1u << 24) * 4.0f - 2.0f;
  }
  return x;
}

std::vector<double> row_sums(const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<double> out(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) out[r] += x[r * cols + j];
  return out;
}

// ---- block barrier ---------------------------------------------------------------------------

void check_block_sum() {
  const int64_t rows = 64, cols = 1000;
  const auto x = random_rows(rows, cols, 1);
  const auto want = row_sums(x, rows, cols);
  std::vector<float> out(rows);
  OBJX_LAUNCH(rows, kThreads, 0, nullptr, block_sum_kernel)(x.data(), cols, true, out.data());
  for (int64_t r = 0; r < rows; ++r)
    expect(std::fabs(out[r] - want[r]) < 1e-3, "block_sum with barrier, row " + std::to_string(r));
  for (int run = 0; run < 3; ++run) {
    OBJX_LAUNCH(rows, kThreads, 0, nullptr, block_sum_kernel)(x.data(), cols, false, out.data());
    int64_t wrong = 0;
    for (int64_t r = 0; r < rows; ++r) wrong += std::fabs(out[r] - want[r]) > 1e-3;
    expect(wrong > rows / 2, "block_sum without barrier must read unwritten slots, run " + std::to_string(run) +
                                 ": only " + std::to_string(wrong) + " rows wrong");
  }
}

// Threads past `live` return at once; the barrier then waits for the others only.
__global__ void early_exit_kernel(unsigned live, int* out) {
  __shared__ int values[1024];
  if (threadIdx.x >= live) return;
  values[threadIdx.x] = static_cast<int>(threadIdx.x * 3 + blockIdx.x);
  __syncthreads();
  const int neighbour = values[(threadIdx.x + 1) % live];
  if (threadIdx.x % 2) return;
  __syncthreads();  // among the even threads only
  values[threadIdx.x] = neighbour;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = values[threadIdx.x] + values[(threadIdx.x + 2) % (live + live % 2)];
}

void check_early_exit() {
  for (const unsigned live : {1u, 2u, 100u, 255u, 256u}) {
    const unsigned blocks = 8;
    std::vector<int> out(blocks * kThreads, -1);
    OBJX_LAUNCH(blocks, kThreads, 0, nullptr, early_exit_kernel)(live, out.data());
    for (unsigned b = 0; b < blocks; ++b)
      for (unsigned t = 0; t < live; t += 2) {
        const auto first = [&](unsigned i) { return static_cast<int>(((i + 1) % live) * 3 + b); };
        const unsigned other = (t + 2) % (live + live % 2);
        const int want = first(t) + (other < live ? first(other) : 0);
        expect(out[b * kThreads + t] == want,
               "early_exit live=" + std::to_string(live) + " thread " + std::to_string(t));
      }
  }
}

// A partial last warp (100 threads) and a 3-D block in a 3-D grid: every index as CUDA gives it.
__global__ void index_kernel(unsigned* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  __shared__ unsigned reversed[1024];
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  reversed[n - 1 - t] = t;
  __syncthreads();
  out[b * n + t] = reversed[t] == n - 1 - t ? b * n + t : ~0u;  // written by another thread
}

void check_indices() {
  for (const auto& [grid, block] : {std::pair{dim3(3, 4, 5), dim3(8, 4, 2)}, std::pair{dim3(7), dim3(100)}}) {
    const unsigned blocks = grid.x * grid.y * grid.z, n = block.x * block.y * block.z;
    std::vector<unsigned> out(blocks * n, ~0u);
    OBJX_LAUNCH(grid, block, 0, nullptr, index_kernel)(out.data());
    std::vector<unsigned> want(out.size());
    std::iota(want.begin(), want.end(), 0u);
    expect(out == want, "thread/block indices for blockDim " + std::to_string(n));
  }
}

__global__ void one_thread_kernel(unsigned* out) { out[blockIdx.x] = blockIdx.x + gridDim.x; }

void check_grid_limits() {
  const unsigned blocks = 200000;
  std::vector<unsigned> out(blocks);
  OBJX_LAUNCH(blocks, 1, 0, nullptr, one_thread_kernel)(out.data());
  bool all = true;
  for (unsigned b = 0; b < blocks; ++b) all = all && out[b] == b + blocks;
  expect(all, "200000 one-thread blocks");
  const auto rejected = [&](dim3 grid, dim3 block) {
    try {
      OBJX_LAUNCH(grid, block, 0, nullptr, one_thread_kernel)(out.data());
    } catch (const std::runtime_error& e) {
      return std::strstr(e.what(), "invalid configuration argument") != nullptr;
    }
    return false;
  };
  expect(rejected(dim3(0x80000000u), dim3(1)), "gridDim.x 2^31 is rejected");
  expect(rejected(dim3(1), dim3(1025)), "1025 threads are rejected");
  expect(rejected(dim3(1), dim3(32, 32, 2)), "32x32x2 threads are rejected");
  expect(rejected(dim3(0), dim3(32)), "an empty grid is rejected");
}

// ---- warp operations -------------------------------------------------------------------------

template <typename T>
T lane_value(unsigned id) {
  if constexpr (sizeof(T) == 8 && std::is_integral_v<T>)
    return static_cast<T>((static_cast<unsigned long long>(id) << 33) + id);  // the high word matters
  else
    return static_cast<T>(id) * static_cast<T>(3) + static_cast<T>(1);
}

template <typename T>
__global__ void shuffle_kernel(unsigned delta, int lane_mask, int width, T* out) {
  const unsigned id = blockIdx.x * blockDim.x + threadIdx.x;
  const T v = lane_value<T>(id);
  const int src = static_cast<int>((threadIdx.x % 32) * 7 + 3);
  T* mine = out + 4 * id;
  mine[0] = __shfl_sync(0xffffffffu, v, src, width);
  mine[1] = __shfl_up_sync(0xffffffffu, v, delta, width);
  mine[2] = __shfl_down_sync(0xffffffffu, v, delta, width);
  mine[3] = __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
}

// Segments of `width` lanes: idx wraps within the segment; up, down and xor fall back to the
// caller's own value when the source lies beyond its segment (xor may read earlier segments).
template <typename T>
void check_shuffles(const char* type) {
  const unsigned blocks = 3, threads = 128;
  for (const int width : {32, 16, 8, 1})
    for (const unsigned delta : {1u, 5u, 31u, 32u, 40u})
      for (const int lane_mask : {1, 16, 31, 17, 32}) {
        std::vector<T> out(4 * blocks * threads);
        OBJX_LAUNCH(blocks, threads, 0, nullptr, shuffle_kernel<T>)(delta, lane_mask, width, out.data());
        bool ok = true;
        for (unsigned id = 0; id < blocks * threads; ++id) {
          const unsigned lane = id % 32, warp_base = id - lane, start = lane / width * width, end = start + width;
          const auto value = [&](unsigned l) { return lane_value<T>(warp_base + l); };
          const unsigned idx_src = start + (lane * 7 + 3) % width;
          const unsigned up_src = lane >= start + delta ? lane - delta : lane;
          const unsigned down_src = lane + delta < end ? lane + delta : lane;
          const unsigned xor_src = (lane ^ static_cast<unsigned>(lane_mask)) < end ? lane ^ lane_mask : lane;
          ok = ok && out[4 * id] == value(idx_src) && out[4 * id + 1] == value(up_src) &&
               out[4 * id + 2] == value(down_src) && out[4 * id + 3] == value(xor_src);
        }
        expect(ok, std::string("shuffles of ") + type + ", width " + std::to_string(width) + ", delta " +
                       std::to_string(delta) + ", lane mask " + std::to_string(lane_mask));
      }
}

void check_warp_sum() {
  const int64_t rows = 37, cols = 3001;
  const auto x = random_rows(rows, cols, 2);
  const auto want = row_sums(x, rows, cols);
  std::vector<float> out(rows);
  OBJX_LAUNCH(rows, kThreads, 0, nullptr, warp_sum_kernel)(x.data(), cols, out.data());
  for (int64_t r = 0; r < rows; ++r) expect(std::fabs(out[r] - want[r]) < 1e-2, "warp_sum row " + std::to_string(r));
}

// Lanes exchange through shared memory with only __syncwarp between the write and the read.
__global__ void syncwarp_kernel(int* out) {
  __shared__ int slots[kThreads];
  slots[threadIdx.x] = static_cast<int>(threadIdx.x + 1000 * blockIdx.x);
  __syncwarp();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[threadIdx.x ^ 1];
}

void check_syncwarp() {
  const unsigned blocks = 5;
  std::vector<int> out(blocks * kThreads);
  OBJX_LAUNCH(blocks, kThreads, 0, nullptr, syncwarp_kernel)(out.data());
  bool ok = true;
  for (unsigned i = 0; i < out.size(); ++i)
    ok = ok && out[i] == static_cast<int>((i % kThreads ^ 1) + 1000 * (i / kThreads));
  expect(ok, "__syncwarp orders shared-memory writes within a warp");
}

// ---- block_reduce.cuh, unchanged -------------------------------------------------------------

template <typename acc_t>
__global__ void row_lse_kernel(const acc_t* __restrict__ x, int64_t cols, acc_t* __restrict__ lse,
                               acc_t* __restrict__ sum, int* __restrict__ disagreements) {
  namespace math = objx::math;
  namespace cuda = objx::cuda;
  const acc_t* row = x + blockIdx.x * cols;
  math::LseState<acc_t> st = math::lse_empty<acc_t>();
  acc_t s = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    math::lse_add(st, row[j]);
    s += row[j];
  }
  const acc_t row_lse = math::lse_finish(cuda::block_lse(st));
  const acc_t row_sum = cuda::block_sum(s);
  const cuda::LseSum<acc_t> both = cuda::block_lse_sum(cuda::LseSum<acc_t>{st, s});
  if (math::lse_finish(both.lse) != row_lse || both.sum != row_sum) atomicAdd(disagreements, 1);
  if (threadIdx.x == 0) {
    lse[blockIdx.x] = row_lse;
    sum[blockIdx.x] = row_sum;
  }
}

template <typename acc_t>
void check_block_reduce(unsigned threads) {
  const int64_t rows = 19, cols = 4099;
  const auto xf = random_rows(rows, cols, 3);
  std::vector<acc_t> x(xf.begin(), xf.end());
  x[5] = -std::numeric_limits<acc_t>::infinity();
  std::vector<acc_t> lse(rows), sum(rows), lse_again(rows), sum_again(rows);
  int disagreements = 0;
  OBJX_LAUNCH(rows, threads, 0, nullptr, row_lse_kernel<acc_t>)(x.data(), cols, lse.data(), sum.data(), &disagreements);
  OBJX_LAUNCH(rows, threads, 0, nullptr, row_lse_kernel<acc_t>)(x.data(), cols, lse_again.data(), sum_again.data(),
                                                                 &disagreements);
  const std::string what = std::string(sizeof(acc_t) == 4 ? "float" : "double") + " block_reduce, " +
                           std::to_string(threads) + " threads";
  expect(disagreements == 0, what + ": every thread gets the block's result");
  expect(lse == lse_again && sum == sum_again, what + ": bit-identical from run to run");
  for (int64_t r = 0; r < rows; ++r) {
    double m = -INFINITY, e = 0, s = 0;
    for (int64_t j = 0; j < cols; ++j) m = std::max(m, static_cast<double>(x[r * cols + j]));
    for (int64_t j = 0; j < cols; ++j) {
      e += std::exp(x[r * cols + j] - m);
      s += x[r * cols + j];
    }
    const double tol = sizeof(acc_t) == 4 ? 1e-4 : 1e-10;
    expect(std::fabs(lse[r] - (m + std::log(e))) < tol * 10, what + ": lse of row " + std::to_string(r));
    if (std::isfinite(s)) expect(std::fabs(sum[r] - s) < tol * 1000, what + ": sum of row " + std::to_string(r));
  }
}

// ---- atomics across OS threads ---------------------------------------------------------------

struct AtomicSlots {
  int count = 0;
  float fsum = 0;
  double dsum = 0;
  unsigned long long usum = 0;
  int imin = 0, imax = 0;
  unsigned umin = ~0u, umax = 0;
  unsigned long long ullmin = ~0ull, ullmax = 0;
  long long llmin = 0, llmax = 0;
  int cas_count = 0;
  unsigned exchanged = ~0u;
};

__global__ void atomics_kernel(AtomicSlots* s, unsigned* old_exchanged, std::thread::id* os_thread) {
  const unsigned id = blockIdx.x * blockDim.x + threadIdx.x;
  const int signed_value = static_cast<int>(id % 1001) - 500;
  atomicAdd(&s->count, 1);
  atomicAdd(&s->fsum, 1.0f);
  atomicAdd(&s->dsum, 0.5);
  atomicAdd(&s->usum, static_cast<unsigned long long>(id));
  atomicMin(&s->imin, signed_value);
  atomicMax(&s->imax, signed_value);
  atomicMin(&s->umin, id + 7);
  atomicMax(&s->umax, id + 7);
  atomicMin(&s->ullmin, (1ull << 40) + id);
  atomicMax(&s->ullmax, (1ull << 40) + id);
  atomicMin(&s->llmin, -(1ll << 40) - id);
  atomicMax(&s->llmax, (1ll << 40) + id);
  for (int seen = s->cas_count, old; (old = atomicCAS(&s->cas_count, seen, seen + 1)) != seen;) seen = old;
  old_exchanged[id] = atomicExch(&s->exchanged, id);
  if (threadIdx.x == 0) os_thread[blockIdx.x] = std::this_thread::get_id();  // a kernel is host code here
}

void check_atomics() {
  const unsigned blocks = 3000, threads = 64, n = blocks * threads;
  AtomicSlots s;
  std::vector<unsigned> old(n);
  std::vector<std::thread::id> os_thread(blocks);
  OBJX_LAUNCH(blocks, threads, 0, nullptr, atomics_kernel)(&s, old.data(), os_thread.data());
  expect(s.count == static_cast<int>(n) && s.cas_count == static_cast<int>(n), "atomicAdd and atomicCAS counts");
  expect(s.fsum == static_cast<float>(n) && s.dsum == n * 0.5, "float and double atomicAdd");
  expect(s.usum == static_cast<unsigned long long>(n) * (n - 1) / 2, "unsigned long long atomicAdd");
  expect(s.imin == -500 && s.imax == 500 && s.umin == 7 && s.umax == n + 6, "int and unsigned atomicMin/Max");
  expect(s.ullmin == (1ull << 40) && s.ullmax == (1ull << 40) + n - 1, "unsigned long long atomicMin/Max");
  expect(s.llmin == -(1ll << 40) - (n - 1) && s.llmax == (1ll << 40) + n - 1, "long long atomicMin/Max");
  old.push_back(s.exchanged);  // every value is returned exactly once, the initial one included
  std::sort(old.begin(), old.end());
  std::vector<unsigned> want(n);
  std::iota(want.begin(), want.end(), 0u);
  want.push_back(~0u);
  expect(old == want, "atomicExch hands out every value once");
  const std::set<std::thread::id> distinct(os_thread.begin(), os_thread.end());
  std::printf("atomics: %u blocks ran on %zu OS threads\n", blocks, distinct.size());
  expect(distinct.size() > 1 || std::thread::hardware_concurrency() < 2, "blocks run on several OS threads");

  const int64_t values_n = 100003;
  std::vector<unsigned long long> values(values_n);
  for (int64_t i = 0; i < values_n; ++i) values[i] = 1000000007ull * (i + 11) % 998244353ull + 5;
  unsigned long long slot = ~0ull;
  OBJX_LAUNCH((values_n + kThreads - 1) / kThreads, kThreads, 0, nullptr, atomic_min_kernel)(values.data(), values_n,
                                                                                           &slot);
  expect(slot == *std::min_element(values.begin(), values.end()), "atomic_min_kernel finds the minimum");
}

// ---- failures the simulator must report, each in a child process ------------------------------

struct ChildResult {
  int status = 0;
  std::string output;  // stdout and stderr
};

ChildResult run_child(const std::function<void()>& body) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) throw std::runtime_error("pipe");
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    dup2(pipe_fds[1], 1);
    dup2(pipe_fds[1], 2);
    close(pipe_fds[0]);
    body();
    std::fflush(nullptr);
    _exit(0);
  }
  close(pipe_fds[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buf, sizeof buf)) > 0;) r.output.append(buf, n);
  close(pipe_fds[0]);
  waitpid(pid, &r.status, 0);
  return r;
}

// Runs this program again with `mode` as its argument and `env` added to its environment.
ChildResult run_self(const char* mode, const std::vector<std::pair<std::string, std::string>>& env) {
  return run_child([&] {
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    execl("/proc/self/exe", "sim_check", mode, static_cast<char*>(nullptr));
    _exit(127);
  });
}

bool aborted(const ChildResult& r) { return WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT; }

void expect_abort(const std::string& name, const std::function<void()>& body, const std::vector<std::string>& says) {
  const ChildResult r = run_child(body);
  bool ok = aborted(r);
  for (const auto& s : says) ok = ok && r.output.find(s) != std::string::npos;
  expect(ok, name + " must abort saying " + says.front() + "; the child printed:\n" + r.output);
}

// Lanes 0-15 of every warp wait at __syncthreads, lanes 16-31 in a shuffle that needs all 32.
__global__ void split_barrier_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16)
    __syncthreads();
  else
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Half the block waits at one __syncthreads(), half at another.
__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x < 128) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Lane 5 returns; the rest of its warp shuffles with the full mask.
__global__ void exit_in_shuffle_kernel(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

// A shuffle naming lanes 0-15 only.
__global__ void partial_mask_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 1); }

// Launched with 48 threads: a shuffle in a warp of 16.
__global__ void xor_shuffle_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }

// Odd lanes shuffle by xor while even lanes shuffle down.
__global__ void mixed_shuffles_kernel(float* out) {
  out[threadIdx.x] = threadIdx.x % 2 ? __shfl_xor_sync(0xffffffffu, 1.0f, 1) : __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

void check_failures() {
  std::vector<float> out(1024);
  float* o = out.data();
  expect_abort("threads split between __syncthreads and a shuffle",
               [&] { OBJX_LAUNCH(1, kThreads, 0, nullptr, split_barrier_kernel)(o); },
               {"deadlock", "kernel split_barrier_kernel, block (0,0,0)", "waiting at __syncthreads() at",
                "waiting at __shfl_xor_sync() at", "threads 0-15, 32-47"});
  expect_abort("two different __syncthreads calls",
               [&] { OBJX_LAUNCH(1, kThreads, 0, nullptr, two_barriers_kernel)(o); },
               {"divergent __syncthreads()", "kernel two_barriers_kernel", "threads 0-127: waiting at"});
  expect_abort("a lane exits before a shuffle", [&] { OBJX_LAUNCH(1, 64, 0, nullptr, exit_in_shuffle_kernel)(o); },
               {"every lane must take part", "kernel exit_in_shuffle_kernel", "__shfl_down_sync()"});
  expect_abort("a partial shuffle mask", [&] { OBJX_LAUNCH(1, 32, 0, nullptr, partial_mask_kernel)(o); },
               {"mask 0x0000ffff", "kernel partial_mask_kernel"});
  expect_abort("a shuffle in a partial warp", [&] { OBJX_LAUNCH(1, 48, 0, nullptr, xor_shuffle_kernel)(o); },
               {"partial warp of 16 threads"});
  expect_abort("a warp mixing shuffles", [&] { OBJX_LAUNCH(1, 32, 0, nullptr, mixed_shuffles_kernel)(o); },
               {"divergent warp operation", "kernel mixed_shuffles_kernel"});
  expect_abort("dynamic shared memory", [&] { OBJX_LAUNCH(1, 32, 16, nullptr, partial_mask_kernel)(o); },
               {"dynamic shared memory"});
  expect_abort("a barrier outside a kernel", [] { __syncthreads(); }, {"__syncthreads() called outside a kernel"});
}

#if defined(__SANITIZE_ADDRESS__)
__global__ void write_element_kernel(float* x, int64_t index) {
  if (threadIdx.x == 0) x[index] = 1.0f;
}
#endif

void check_address_sanitizer() {
#if defined(__SANITIZE_ADDRESS__)
  const auto overflow = [](bool write, int64_t past) {
    return run_child([=] {
      std::vector<float> x(1000, 1.0f);
      float out = 0;
      if (write)
        OBJX_LAUNCH(1, kThreads, 0, nullptr, write_element_kernel)(x.data(), 999 + past);
      else
        OBJX_LAUNCH(1, kThreads, 0, nullptr, read_element_kernel)(x.data(), 999 + past, &out);
      std::printf("no report, read %g\n", out);
    });
  };
  const ChildResult read = overflow(false, 1), write = overflow(true, 1), inside = overflow(false, 0);
  const auto says = [](const ChildResult& r, const char* what) {
    return r.output.find("heap-buffer-overflow") != std::string::npos && r.output.find(what) != std::string::npos;
  };
  expect(says(read, "READ of size 4"), "ASAN reports a kernel's read one past a heap buffer:\n" + read.output);
  expect(says(write, "WRITE of size 4"), "ASAN reports a kernel's write one past a heap buffer:\n" + write.output);
  expect(inside.status == 0 && inside.output.find("AddressSanitizer") == std::string::npos,
         "ASAN stays quiet on the last element:\n" + inside.output);
#else
  std::printf("(not an ASAN build: the heap-overflow checks are skipped)\n");
#endif
}

// ---- coverage report -------------------------------------------------------------------------

template <typename T, typename U>
__global__ void typed_kernel(int* out) {
  if (threadIdx.x == 0) *out += 1;
}

__global__ void crash_kernel(int* out) { *out = 1; }

void report_run() {  // what each --report-run child launches
  int n = 0;
  for (int i = 0; i < 3; ++i) OBJX_LAUNCH(1, 32, 0, nullptr, typed_kernel<demo::Half, float>)(&n);
  OBJX_LAUNCH(1, 32, 0, nullptr, typed_kernel<double, double>)(&n);
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void check_report() {
  const std::string path = "/tmp/objx_sim_check_report." + std::to_string(getpid()) + ".json";
  unlink(path.c_str());
  const std::vector<std::pair<std::string, std::string>> env{{"OBJX_CUDA_SIM_REPORT", path}};
  const ChildResult first = run_self("--report-run", env), second = run_self("--report-run", env);
  expect(first.status == 0 && second.status == 0, "report children run:\n" + first.output + second.output);
  const std::string merged = read_text(path);
  expect(merged == "{\n  \"typed_kernel<demo::Half, float>\": 6,\n  \"typed_kernel<double, double>\": 2\n}\n",
         "two runs' reports merge:\n" + merged);
  const ChildResult crash = run_self("--report-crash", env);
  const std::string after_crash = read_text(path);
  expect(aborted(crash) && after_crash.find("\"crash_kernel\": 1") != std::string::npos &&
             after_crash.find("\"typed_kernel<demo::Half, float>\": 6") != std::string::npos,
         "a crashed run's first launch is in the report:\n" + after_crash);
  unlink(path.c_str());
}

// ---- speed -----------------------------------------------------------------------------------

__global__ void barrier_loop_kernel(int iterations, int* out) {
  int v = 0;
  for (int i = 0; i < iterations; ++i) {
    v += static_cast<int>(threadIdx.x);
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

__global__ void shuffle_loop_kernel(int iterations, int* out) {
  int v = static_cast<int>(threadIdx.x);
  for (int i = 0; i < iterations; ++i) v = __shfl_xor_sync(0xffffffffu, v, 1 + i % 31);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

template <typename F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void timing() {
  std::vector<int> out(kThreads);
  const int iterations = 20000;
  const double sync_s =
      seconds([&] { OBJX_LAUNCH(1, kThreads, 0, nullptr, barrier_loop_kernel)(iterations, out.data()); });
  const double shfl_s =
      seconds([&] { OBJX_LAUNCH(1, kThreads, 0, nullptr, shuffle_loop_kernel)(iterations, out.data()); });
  const double switches = static_cast<double>(kThreads) * iterations;
  std::printf("one OS thread: %.1f M thread switches/s through __syncthreads, %.1f M/s through __shfl_xor_sync\n",
              switches / sync_s / 1e6, switches / shfl_s / 1e6);

  const int64_t rows = 4096;
  for (const int64_t cols : {256, 4096}) {
    const auto xf = random_rows(rows, cols, 4);
    std::vector<float> lse(rows), sum(rows);
    int disagreements = 0;
    const auto row_lse = [&] {
      OBJX_LAUNCH(rows, kThreads, 0, nullptr, row_lse_kernel<float>)(xf.data(), cols, lse.data(), sum.data(),
                                                                     &disagreements);
    };
    row_lse();  // the first launch also creates the OS threads' fibers
    const double lse_s = seconds(row_lse);
    const double sum_s =
        seconds([&] { OBJX_LAUNCH(rows, kThreads, 0, nullptr, block_sum_kernel)(xf.data(), cols, true, lse.data()); });
    std::printf("%ld x %ld floats, 256 threads a block: %.3f s selftest block_sum (1 barrier), %.3f s row_lse_kernel "
                "(block_lse + block_sum + block_lse_sum of block_reduce.cuh)\n",
                static_cast<long>(rows), static_cast<long>(cols), sum_s, lse_s);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "--report-run") {
    report_run();
    return 0;
  }
  if (mode == "--report-crash") {
    int n = 0;
    OBJX_LAUNCH(1, 1, 0, nullptr, crash_kernel)(&n);
    std::abort();
  }
  if (mode == "--timing") {
    timing();
    return 0;
  }
  setenv("OBJX_CUDA_SIM_THREADS", "4", 0);  // blocks on several OS threads even on a small machine
  std::printf("OBJX_CUDA_SIM_THREADS=%s\n", std::getenv("OBJX_CUDA_SIM_THREADS"));

  check_block_sum();
  check_early_exit();
  check_indices();
  check_grid_limits();
  check_shuffles<int>("int");
  check_shuffles<unsigned>("unsigned");
  check_shuffles<long long>("long long");
  check_shuffles<unsigned long long>("unsigned long long");
  check_shuffles<float>("float");
  check_shuffles<double>("double");
  check_warp_sum();
  check_syncwarp();
  for (const unsigned threads : {32u, 256u, 1024u}) {
    check_block_reduce<float>(threads);
    check_block_reduce<double>(threads);
  }
  check_atomics();
  check_failures();
  check_address_sanitizer();
  check_report();

  for (const char* threads : {"1", "2"}) {
    std::printf("timing, OBJX_CUDA_SIM_THREADS=%s:\n", threads);
    const ChildResult t = run_self("--timing", {{"OBJX_CUDA_SIM_THREADS", threads}});
    std::printf("%s", t.output.c_str());
    expect(t.status == 0, "the timing child ran");
  }
  std::printf(failures ? "sim_check: %d FAILED\n" : "sim_check: all checks passed\n", failures);
  return failures ? 1 : 0;
}
