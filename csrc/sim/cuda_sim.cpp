// The CUDA simulator's scheduler, OS-thread pool and coverage report (see cuda_sim.h).
#if defined(OBJX_CUDA_SIM) && !defined(__CUDACC__)
#include "sim/cuda_sim.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA simulator's fiber switch (objx_sim_switch) is written for x86-64 only"
#endif

// objx_sim_switch(save_sp, load_sp): pushes the callee-saved registers, stores the stack pointer in
// *save_sp, then resumes the context saved at load_sp. It skips MXCSR and the x87 control word: all
// fibers of an OS thread share one floating-point environment and no kernel changes it. A new
// fiber's stack is prepared so that the switch "returns" into objx_sim_fiber_start, which calls
// r13(r12). This is the whole cost of a switch: no signal mask syscall, unlike swapcontext.
extern "C" void objx_sim_switch(void** save_sp, void* load_sp);
extern "C" void objx_sim_fiber_start();
asm(R"(
  .text
  .p2align 4
  .globl objx_sim_switch
  .hidden objx_sim_switch
  .type objx_sim_switch, @function
objx_sim_switch:
  .cfi_startproc
  pushq %rbp
  .cfi_adjust_cfa_offset 8
  pushq %rbx
  .cfi_adjust_cfa_offset 8
  pushq %r12
  .cfi_adjust_cfa_offset 8
  pushq %r13
  .cfi_adjust_cfa_offset 8
  pushq %r14
  .cfi_adjust_cfa_offset 8
  pushq %r15
  .cfi_adjust_cfa_offset 8
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  .cfi_adjust_cfa_offset -8
  popq %r14
  .cfi_adjust_cfa_offset -8
  popq %r13
  .cfi_adjust_cfa_offset -8
  popq %r12
  .cfi_adjust_cfa_offset -8
  popq %rbx
  .cfi_adjust_cfa_offset -8
  popq %rbp
  .cfi_adjust_cfa_offset -8
  ret
  .cfi_endproc
  .size objx_sim_switch, .-objx_sim_switch

  .p2align 4
  .globl objx_sim_fiber_start
  .hidden objx_sim_fiber_start
  .type objx_sim_fiber_start, @function
objx_sim_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size objx_sim_fiber_start, .-objx_sim_fiber_start
)");

namespace objx::sim::detail {
namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxBlockThreads = 1024;

[[noreturn, gnu::cold, gnu::noinline]] void fail(const std::string& message) {
  std::fprintf(stderr, "objx CUDA simulator: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

// ---- configuration ---------------------------------------------------------------------------

std::uint64_t env_number(const char* name, std::uint64_t fallback, std::uint64_t min, std::uint64_t max) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 0);
  if (errno || *end || *text == '-' || v < min || v > max)
    fail(std::string(name) + "=" + text + ": expected a whole number in [" + std::to_string(min) + ", " +
         std::to_string(max) + "]");
  return v;
}

// Ample for the kernels, and for AddressSanitizer's frames and its error reports. Not more: with
// ASAN's detect_stack_use_after_return each fiber gets a fake stack sized after its real one.
constexpr std::uint64_t kDefaultStackKb = 256;

struct Config {
  unsigned os_threads;
  std::size_t stack_bytes;
  std::uint64_t seed;
};

const Config& config() {
  static const Config c{
      static_cast<unsigned>(
          env_number("OBJX_CUDA_SIM_THREADS", std::max(1u, std::thread::hardware_concurrency()), 1, 1024)),
      static_cast<std::size_t>(env_number("OBJX_CUDA_SIM_STACK_KB", kDefaultStackKb, 16, 1 << 20) * 1024),
      env_number("OBJX_CUDA_SIM_SEED", 0, 0, UINT64_MAX)};
  return c;
}

// ---- simulated threads -----------------------------------------------------------------------

struct Stack {
  const void* bottom = nullptr;  // lowest address
  std::size_t size = 0;
};

// Each OS thread keeps its fibers from block to block: fiber i always plays the block's thread of
// linear index i, and loops over "run the kernel, then wait for the next block".
enum class Wait : std::uint8_t { none, block_sync, warp, exited };

struct Worker;

struct SimThread : ThreadContext {
  Worker* worker;
  unsigned linear, warp, lane;
  void* sp = nullptr;          // saved stack pointer while switched out
  void* fake_stack = nullptr;  // ASAN's fake stack while switched out
  Stack stack;
  char* mapping = nullptr;  // the stack with a guard page below it
  std::size_t mapped = 0;
  Wait wait = Wait::none;
  WarpOp op = WarpOp::sync;
  std::source_location site;  // of the barrier it waits at
  std::uint64_t shfl_value = 0, shfl_result = 0;
  std::uint32_t shfl_arg = 0;

  SimThread(Worker& w, unsigned index);
  ~SimThread();
  SimThread(const SimThread&) = delete;
  SimThread& operator=(const SimThread&) = delete;
};

struct WarpState {
  unsigned lanes = 0;  // 32, fewer in a partial last warp
  unsigned arrived = 0;
  unsigned exited = 0;
  WarpOp op = WarpOp::sync;  // of the lanes that arrived
  unsigned bytes = 0;
  int width = 0;
  std::source_location site;
};

// One OS thread's scheduling state: its fibers and the block it runs.
struct Worker {
  void* main_sp = nullptr;  // the OS thread's own context while a block runs
  void* main_fake_stack = nullptr;
  Stack main_stack;
  std::vector<std::unique_ptr<SimThread>> fibers;

  const KernelLaunch* launch = nullptr;
  std::uint64_t block_linear = 0;
  uint3 block_idx{};
  unsigned threads = 0, live = 0, at_sync = 0;
  std::vector<WarpState> warps;
  std::vector<SimThread*> run, next;  // this round's order, and the threads released during it
  std::size_t run_pos = 0;
  std::uint64_t round = 0;

  Worker();
  void run_block(const KernelLaunch& l, std::uint64_t block);
  SimThread& fiber(unsigned linear) { return *fibers[linear]; }
};

Worker& this_worker() {
  static thread_local Worker w;
  return w;
}

Worker::Worker() {
  pthread_attr_t attr;
  void* addr = nullptr;
  std::size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  main_stack = {addr, size};
  run.reserve(kMaxBlockThreads);
  next.reserve(kMaxBlockThreads);
}

[[noreturn]] void fiber_main(SimThread* self) noexcept;

SimThread::SimThread(Worker& w, unsigned index)
    : worker(&w), linear(index), warp(index / kWarpSize), lane(index % kWarpSize) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t usable = (config().stack_bytes + page - 1) / page * page;
  mapped = usable + page;
  void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                 -1, 0);
  if (m == MAP_FAILED) fail("cannot map a " + std::to_string(mapped) + "-byte fiber stack");
  mapping = static_cast<char*>(m);
  mprotect(mapping, page, PROT_NONE);  // an overflow faults instead of corrupting the next stack
  stack = {mapping + page, usable};
  // The frame objx_sim_switch pops: r15, r14, r13, r12, rbx, rbp, return address. After the return
  // the stack is 16-byte aligned for objx_sim_fiber_start's call; rbp = 0 ends frame-pointer walks.
  void** top = reinterpret_cast<void**>(mapping + mapped - 16);
  top[-1] = reinterpret_cast<void*>(&objx_sim_fiber_start);
  top[-2] = nullptr;                                   // rbp
  top[-3] = nullptr;                                   // rbx
  top[-4] = this;                                      // r12: the argument
  top[-5] = reinterpret_cast<void*>(&fiber_main);      // r13: the function
  top[-6] = nullptr;                                   // r14
  top[-7] = nullptr;                                   // r15
  sp = top - 7;
}

SimThread::~SimThread() {
#if defined(__SANITIZE_ADDRESS__)
  __asan_unpoison_memory_region(stack.bottom, stack.size);  // a later mapping here must start clean
#endif
  munmap(mapping, mapped);
}

void switch_to(void** save_sp, [[maybe_unused]] void** save_fake_stack, [[maybe_unused]] const Stack& to_stack,
               void* to_sp) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(save_fake_stack, to_stack.bottom, to_stack.size);
#endif
  objx_sim_switch(save_sp, to_sp);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(*save_fake_stack, nullptr, nullptr);
#endif
}

// ---- messages --------------------------------------------------------------------------------

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::sync: return "__syncwarp()";
    case WarpOp::shfl_idx: return "__shfl_sync()";
    case WarpOp::shfl_up: return "__shfl_up_sync()";
    case WarpOp::shfl_down: return "__shfl_down_sync()";
    case WarpOp::shfl_xor: return "__shfl_xor_sync()";
  }
  return "?";
}

std::string where(const std::source_location& site) {
  return std::string(site.file_name()) + ":" + std::to_string(site.line());
}

std::string dims(uint3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string block_header(const Worker& w) {
  return "kernel " + std::string(w.launch->kernel_name) + ", block " + dims(w.block_idx) + " of grid " +
         dims(w.launch->grid) + ", blockDim " + dims(w.launch->block);
}

std::string state_of(const SimThread& t) {
  switch (t.wait) {
    case Wait::none: return "runnable";
    case Wait::block_sync: return "waiting at __syncthreads() at " + where(t.site);
    case Wait::warp: return std::string("waiting at ") + op_name(t.op) + " at " + where(t.site);
    case Wait::exited: return "exited";
  }
  return "?";
}

// "  threads 0-15, 32-47: waiting at ..." lines, threads by linear index, states in order of first use.
std::string thread_states(Worker& w) {
  std::vector<std::pair<std::string, std::string>> groups;
  for (unsigned i = 0; i < w.threads;) {
    const std::string state = state_of(w.fiber(i));
    unsigned j = i + 1;
    while (j < w.threads && state_of(w.fiber(j)) == state) ++j;
    const std::string range = j - i == 1 ? std::to_string(i) : std::to_string(i) + "-" + std::to_string(j - 1);
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& p) { return p.first == state; });
    if (g == groups.end())
      groups.emplace_back(state, range);
    else
      g->second += ", " + range;
    i = j;
  }
  std::string out;
  for (const auto& [state, ranges] : groups) out += "\n  threads " + ranges + ": " + state;
  return out;
}

[[noreturn, gnu::cold, gnu::noinline]] void fail_in_block(Worker& w, const std::string& what) {
  fail(block_header(w) + ": " + what + thread_states(w));
}

// ---- scheduling ------------------------------------------------------------------------------

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A permutation fixed by (seed, block, round): results are reproducible whichever OS thread runs
// the block, and the order differs from barrier to barrier. Each 64-bit draw gives three 21-bit
// numbers (a bias below 1024 / 2^21 is of no matter for a schedule).
void shuffle_round(Worker& w) {
  std::uint64_t state = config().seed ^ (w.block_linear * 0xD1B54A32D192ED03ull) ^ (w.round * 0x8CB92BA72F3D8DD7ull);
  std::uint64_t bits = 0;
  int draws_left = 0;
  for (std::size_t i = w.run.size(); i > 1; --i) {
    if (draws_left == 0) {
      bits = splitmix64(state);
      draws_left = 3;
    }
    const std::size_t j = static_cast<std::size_t>(((bits & 0x1fffff) * i) >> 21);
    bits >>= 21;
    --draws_left;
    std::swap(w.run[i - 1], w.run[j]);
  }
}

SimThread* next_ready(Worker& w) {
  if (w.run_pos == w.run.size()) {
    if (w.next.empty()) return nullptr;
    std::swap(w.run, w.next);
    w.next.clear();
    w.run_pos = 0;
    ++w.round;
    shuffle_round(w);
  }
  return w.run[w.run_pos++];
}

[[noreturn, gnu::cold, gnu::noinline]] void deadlock(Worker& w) {
  fail_in_block(w,
                "deadlock: no thread can run (live threads wait at a barrier others never reach, or are split "
                "between __syncthreads() and a warp-level operation)");
}

// Runs other threads until this one is released from the barrier it waits at.
void suspend(SimThread& self) {
  Worker& w = *self.worker;
  SimThread* next = next_ready(w);
  if (!next) deadlock(w);
  if (next == &self) return;
  current = next;
  switch_to(&self.sp, &self.fake_stack, next->stack, next->sp);
}

[[noreturn, gnu::cold, gnu::noinline]] void fail_outside_kernel(const char* what) {
  fail(std::string(what) + " called outside a kernel");
}

SimThread& running_thread(const char* what) {
  if (!current) [[unlikely]]
    fail_outside_kernel(what);
  return static_cast<SimThread&>(const_cast<ThreadContext&>(*current));
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

void release_sync(Worker& w) {
  const SimThread* first = nullptr;
  for (unsigned i = 0; i < w.threads; ++i) {
    const SimThread& t = w.fiber(i);
    if (t.wait != Wait::block_sync) continue;
    if (!first)
      first = &t;
    else if (!same_site(t.site, first->site))
      fail_in_block(w, "divergent __syncthreads(): the block's threads wait at different __syncthreads() calls");
  }
  for (unsigned i = 0; i < w.threads; ++i) {
    SimThread& t = w.fiber(i);
    if (t.wait != Wait::block_sync) continue;
    t.wait = Wait::none;
    w.next.push_back(&t);
  }
  w.at_sync = 0;
}

// The source lane of a shuffle as PTX's shfl.sync defines it: segments of `width` lanes; a source
// outside the caller's segment (above it, or below it for up) yields the caller's own value.
unsigned source_lane(WarpOp op, unsigned lane, std::uint32_t arg, int width) {
  const unsigned segment_mask = kWarpSize - static_cast<unsigned>(width);
  const unsigned min_lane = lane & segment_mask;
  const unsigned max_lane = min_lane | (31u & ~segment_mask);
  switch (op) {
    case WarpOp::shfl_up: {
      const std::int64_t j = static_cast<std::int64_t>(lane) - arg;
      return j >= min_lane ? static_cast<unsigned>(j) : lane;
    }
    case WarpOp::shfl_down: {
      const std::uint64_t j = static_cast<std::uint64_t>(lane) + arg;
      return j <= max_lane ? static_cast<unsigned>(j) : lane;
    }
    case WarpOp::shfl_xor: {
      const std::uint32_t j = lane ^ arg;
      return j <= max_lane ? j : lane;
    }
    case WarpOp::shfl_idx: return min_lane | (arg & 31u & ~segment_mask);
    case WarpOp::sync: return lane;
  }
  return lane;
}

void complete_warp(Worker& w, unsigned warp_index) {
  WarpState& warp = w.warps[warp_index];
  const unsigned base = warp_index * kWarpSize;
  for (unsigned l = 0; l < warp.lanes; ++l) {
    SimThread& t = w.fiber(base + l);
    t.shfl_result = w.fiber(base + source_lane(warp.op, l, t.shfl_arg, warp.width)).shfl_value;
  }
  for (unsigned l = 0; l < warp.lanes; ++l) {
    SimThread& t = w.fiber(base + l);
    t.wait = Wait::none;
    w.next.push_back(&t);
  }
  warp.arrived = 0;
}

unsigned lanes_mask(const WarpState& warp) { return warp.lanes == kWarpSize ? 0xffffffffu : (1u << warp.lanes) - 1; }

bool warp_op_allowed(const WarpState& warp, WarpOp op, unsigned mask, int width) {
  const bool lanes_ok = op == WarpOp::sync ? (mask & lanes_mask(warp)) == lanes_mask(warp)
                                           : mask == 0xffffffffu && warp.lanes == kWarpSize;
  return lanes_ok && width >= 1 && width <= static_cast<int>(kWarpSize) && (width & (width - 1)) == 0 &&
         warp.exited == 0;
}

[[noreturn, gnu::cold, gnu::noinline]] void reject_warp_op(Worker& w, const SimThread& self, const WarpState& warp,
                                                           WarpOp op, unsigned mask, int width,
                                                           const std::source_location& site) {
  std::string why;
  if (op == WarpOp::sync ? (mask & lanes_mask(warp)) != lanes_mask(warp) : mask != 0xffffffffu) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", mask);
    why = std::string("mask ") + hex +
          " does not name every lane of the warp; the simulator supports full-warp masks only";
  } else if (op != WarpOp::sync && warp.lanes != kWarpSize) {
    why = "a shuffle in a partial warp of " + std::to_string(warp.lanes) + " threads";
  } else if (width < 1 || width > static_cast<int>(kWarpSize) || (width & (width - 1)) != 0) {
    why = "width " + std::to_string(width) + " is not a power of two in [1, 32]";
  } else {
    why = std::to_string(warp.exited) + " lane(s) of the warp have exited; every lane must take part";
  }
  fail_in_block(w, std::string(op_name(op)) + " at " + where(site) + " (thread " + std::to_string(self.linear) +
                       ", warp " + std::to_string(self.warp) + "): " + why);
}

[[noreturn, gnu::cold, gnu::noinline]] void reject_divergent_warp(Worker& w, const SimThread& self,
                                                                  const WarpState& warp, WarpOp op,
                                                                  const std::source_location& site) {
  fail_in_block(w, "divergent warp operation: thread " + std::to_string(self.linear) + " reached " + op_name(op) +
                       " at " + where(site) + " while lanes of its warp wait in " + op_name(warp.op) + " at " +
                       where(warp.site) + " (with another operation, value size or width)");
}

void thread_exited(SimThread& self) {
  Worker& w = *self.worker;
  self.wait = Wait::exited;
  --w.live;
  WarpState& warp = w.warps[self.warp];
  ++warp.exited;
  if (warp.arrived > 0)
    fail_in_block(w, "thread " + std::to_string(self.linear) + " exited while other lanes of its warp wait in " +
                         op_name(warp.op) + " at " + where(warp.site) + "; every lane must take part");
  if (w.at_sync > 0 && w.at_sync == w.live) release_sync(w);  // exited threads no longer count
  if (SimThread* next = next_ready(w)) {
    current = next;
    switch_to(&self.sp, &self.fake_stack, next->stack, next->sp);
  } else {
    if (w.live > 0) deadlock(w);
    switch_to(&self.sp, &self.fake_stack, w.main_stack, w.main_sp);  // the block is done
  }
}

[[noreturn]] void fiber_main(SimThread* self) noexcept {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  for (;;) {
    const KernelLaunch& l = *self->worker->launch;
    l.run_thread(l.args);
    thread_exited(*self);  // returns when this fiber starts a thread of another block
  }
}

void Worker::run_block(const KernelLaunch& l, std::uint64_t block) {
  launch = &l;
  block_linear = block;
  const dim3 g = l.grid, b = l.block;
  block_idx = {static_cast<unsigned>(block % g.x), static_cast<unsigned>(block / g.x % g.y),
               static_cast<unsigned>(block / (static_cast<std::uint64_t>(g.x) * g.y))};
  threads = b.x * b.y * b.z;
  while (fibers.size() < threads) fibers.push_back(std::make_unique<SimThread>(*this, fibers.size()));
  warps.assign((threads + kWarpSize - 1) / kWarpSize, WarpState{});
  for (unsigned i = 0; i < warps.size(); ++i) warps[i].lanes = std::min(kWarpSize, threads - i * kWarpSize);
  run.clear();
  next.clear();
  for (unsigned i = 0; i < threads; ++i) {
    SimThread& t = fiber(i);
    t.thread_idx = {i % b.x, i / b.x % b.y, i / (b.x * b.y)};
    t.block_idx = block_idx;
    t.block_dim = b;
    t.grid_dim = g;
    t.wait = Wait::none;
    run.push_back(&t);
  }
  live = threads;
  at_sync = 0;
  round = 0;
  run_pos = 0;
  shuffle_round(*this);
  SimThread* first = next_ready(*this);
  current = first;
  switch_to(&main_sp, &main_fake_stack, first->stack, first->sp);
  current = nullptr;
}

// ---- OS threads ------------------------------------------------------------------------------

// The calling thread runs blocks too, with up to OBJX_CUDA_SIM_THREADS - 1 helpers that take blocks
// as they come. The launch waits only for helpers that have joined it: on a busy machine a helper
// woken late finds the grid done and goes back to sleep. Which OS thread runs a block varies, so
// only what a block finds left in __shared__ memory depends on it (results of race-free kernels
// do not: a block's schedule depends on its index alone).
class BlockPool {
 public:
  explicit BlockPool(unsigned helpers) {
    for (unsigned i = 0; i < helpers; ++i) helpers_.emplace_back([this] { help(); });
  }

  void run(const KernelLaunch& l, std::uint64_t blocks) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      launch_ = &l;
      blocks_ = blocks;
      next_block_.store(0, std::memory_order_relaxed);
      accepting_ = true;
      ++generation_;
    }
    for (std::uint64_t i = 0; i < std::min<std::uint64_t>(helpers_.size(), blocks - 1); ++i) wake_.notify_one();
    run_blocks();
    std::unique_lock<std::mutex> lock(mutex_);
    accepting_ = false;
    done_.wait(lock, [&] { return joined_ == 0; });
  }

 private:
  void run_blocks() {
    Worker& w = this_worker();
    for (std::uint64_t b; (b = next_block_.fetch_add(1, std::memory_order_relaxed)) < blocks_;)
      w.run_block(*launch_, b);
  }

  void help() {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (!accepting_) continue;
      ++joined_;
      lock.unlock();
      run_blocks();
      lock.lock();
      if (--joined_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const KernelLaunch* launch_ = nullptr;
  std::uint64_t blocks_ = 0, generation_ = 0;
  std::atomic<std::uint64_t> next_block_{0};
  bool accepting_ = false;  // helpers may still join the current launch
  unsigned joined_ = 0;     // helpers running blocks of it
  std::vector<std::thread> helpers_;
};

// Never destroyed: its helpers wait in it until the process exits. A forked child has none of the
// parent's threads, so it gets a pool of its own.
BlockPool& block_pool() {
  static BlockPool* pool = nullptr;
  static pid_t owner = 0;
  if (!pool || owner != getpid()) {
    pool = new BlockPool(config().os_threads - 1);
    owner = getpid();
  }
  return *pool;
}

// ---- coverage report -------------------------------------------------------------------------
//
// OBJX_CUDA_SIM_REPORT=FILE: FILE holds a JSON object mapping each launched kernel's name (its
// unqualified template-id as g++ prints it, e.g. "row_logsumexp_kernel<double, double>") to its
// number of launches, one entry per line, sorted by name. It is rewritten when a kernel is launched
// for the first time (so a crash still leaves a report) and at exit; every rewrite adds this
// process's launches not yet written to the counts already in FILE, under flock, so processes that
// share FILE add up.

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// Reads what json_string and CoverageReport::merge_into_file write; false on anything else.
bool parse_counts(const std::string& text, std::map<std::string, std::uint64_t>& counts) {
  std::size_t i = 0;
  const auto skip_space = [&] {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  };
  const auto expect = [&](char c) {
    skip_space();
    if (i >= text.size() || text[i] != c) return false;
    ++i;
    return true;
  };
  skip_space();
  if (i == text.size()) return true;  // a new, empty file
  if (!expect('{')) return false;
  if (expect('}')) return true;
  for (;;) {
    if (!expect('"')) return false;
    std::string key;
    for (; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] != '\\') {
        key += text[i];
      } else if (i + 1 < text.size() && text[i + 1] != 'u') {
        key += text[++i];
      } else if (i + 5 < text.size()) {
        key += static_cast<char>(std::strtoul(text.substr(i + 2, 4).c_str(), nullptr, 16));
        i += 5;
      } else {
        return false;
      }
    }
    if (i >= text.size()) return false;
    ++i;
    if (!expect(':')) return false;
    skip_space();
    if (i >= text.size() || !std::isdigit(static_cast<unsigned char>(text[i]))) return false;
    std::uint64_t n = 0;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) n = n * 10 + (text[i] - '0');
    counts[key] += n;
    if (expect(',')) continue;
    return expect('}');
  }
}

class CoverageReport {
 public:
  explicit CoverageReport(std::string path) : path_(std::move(path)), pid_(getpid()) {}

  void count(const char* kernel) {
    std::lock_guard<std::mutex> lock(mutex_);
    forget_parent_launches();
    if (++launches_[kernel] == 1) merge_into_file();
  }

  void write() {
    std::lock_guard<std::mutex> lock(mutex_);
    forget_parent_launches();
    merge_into_file();
  }

 private:
  // A forked child inherits the parent's counts, which the parent reports itself.
  void forget_parent_launches() {
    if (pid_ == getpid()) return;
    written_ = launches_;
    pid_ = getpid();
  }

  void merge_into_file() {
    std::map<std::string, std::uint64_t> unwritten;
    for (const auto& [name, n] : launches_)
      if (n > written_[name]) unwritten[name] = n - written_[name];
    if (unwritten.empty()) return;
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) {
      std::fprintf(stderr, "objx CUDA simulator: cannot open the coverage report %s\n", path_.c_str());
      if (fd >= 0) close(fd);
      return;
    }
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = pread(fd, buf, sizeof buf, static_cast<off_t>(text.size()))) > 0;) text.append(buf, n);
    std::map<std::string, std::uint64_t> counts;
    if (!parse_counts(text, counts)) {
      std::fprintf(stderr, "objx CUDA simulator: %s is not a coverage report; rewriting it\n", path_.c_str());
      counts.clear();
    }
    for (const auto& [name, n] : unwritten) counts[name] += n;
    std::string out = "{";
    for (const auto& [name, n] : counts)
      out += (out.size() > 1 ? ",\n  " : "\n  ") + json_string(name) + ": " + std::to_string(n);
    out += "\n}\n";
    const bool ok = ftruncate(fd, 0) == 0 && pwrite(fd, out.data(), out.size(), 0) == static_cast<ssize_t>(out.size());
    if (!ok) std::fprintf(stderr, "objx CUDA simulator: cannot write the coverage report %s\n", path_.c_str());
    close(fd);  // releases the lock
    written_ = launches_;
  }

  std::mutex mutex_;
  std::string path_;
  pid_t pid_;
  std::map<std::string, std::uint64_t> launches_, written_;
};

// Null unless OBJX_CUDA_SIM_REPORT is set; never destroyed, so the atexit writer can use it.
CoverageReport* coverage_report() {
  static CoverageReport* report = [] () -> CoverageReport* {
    const char* path = std::getenv("OBJX_CUDA_SIM_REPORT");
    if (!path || !*path) return nullptr;
    auto* r = new CoverageReport(path);
    std::atexit([] { coverage_report()->write(); });
    return r;
  }();
  return report;
}

void check_launch(const KernelLaunch& l) {
  const std::string kernel = l.kernel_name;
  if (current) fail("kernel " + kernel + " launched from inside a kernel (dynamic parallelism is not simulated)");
  if (l.shared_bytes != 0)
    fail("kernel " + kernel + " launched with " + std::to_string(l.shared_bytes) +
         " bytes of dynamic shared memory, which the simulator does not provide");
  const dim3 b = l.block, g = l.grid;
  const std::uint64_t threads = static_cast<std::uint64_t>(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > kMaxBlockThreads ||
      g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    throw std::runtime_error("CUDA error: invalid configuration argument (simulated launch of " + kernel + ", grid " +
                             dims(g) + ", block " + dims(b) + ")");
}

}  // namespace

void sync_block(const std::source_location& site) {
  SimThread& self = running_thread("__syncthreads()");
  Worker& w = *self.worker;
  self.wait = Wait::block_sync;
  self.site = site;
  if (++w.at_sync == w.live) release_sync(w);
  suspend(self);
}

std::uint64_t warp_exchange(WarpOp op, unsigned mask, std::uint64_t value, std::uint32_t lane_arg, int width,
                            unsigned value_bytes, const std::source_location& site) {
  SimThread& self = running_thread(op_name(op));
  Worker& w = *self.worker;
  WarpState& warp = w.warps[self.warp];
  if (!warp_op_allowed(warp, op, mask, width)) [[unlikely]]
    reject_warp_op(w, self, warp, op, mask, width, site);
  if (warp.arrived == 0) {
    warp.op = op;
    warp.bytes = value_bytes;
    warp.width = width;
    warp.site = site;
  } else if (warp.op != op || warp.bytes != value_bytes || warp.width != width) {
    reject_divergent_warp(w, self, warp, op, site);
  }
  self.wait = Wait::warp;
  self.op = op;
  self.site = site;
  self.shfl_value = value;
  self.shfl_arg = lane_arg;
  if (++warp.arrived == warp.lanes) complete_warp(w, self.warp);
  suspend(self);
  return self.shfl_result;
}

void run_grid(const KernelLaunch& l) {
  check_launch(l);
  if (CoverageReport* report = coverage_report()) report->count(l.kernel_name);
  static std::mutex launch_mutex;  // one grid at a time, as on one stream
  std::lock_guard<std::mutex> lock(launch_mutex);
  block_pool().run(l, static_cast<std::uint64_t>(l.grid.x) * l.grid.y * l.grid.z);
}

std::string kernel_name_from_signature(std::string_view pretty_function) {
  const std::size_t at = pretty_function.find("K = ");
  const std::size_t end = pretty_function.rfind(']');
  if (at == std::string_view::npos || end == std::string_view::npos || end < at) return std::string(pretty_function);
  std::string_view name = pretty_function.substr(at + 4, end - at - 4);
  while (!name.empty() && (name.front() == '&' || name.front() == ' ')) name.remove_prefix(1);
  std::size_t start = 0;  // just past the last "::" outside template arguments
  int depth = 0;
  for (std::size_t i = 0; i + 1 < name.size(); ++i) {
    if (name[i] == '<' || name[i] == '(') ++depth;
    if (name[i] == '>' || name[i] == ')') --depth;
    if (depth == 0 && name[i] == ':' && name[i + 1] == ':') start = i + 2;
  }
  return std::string(name.substr(start));
}

}  // namespace objx::sim::detail
#endif  // OBJX_CUDA_SIM && !__CUDACC__
