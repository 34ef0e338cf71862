#pragma once
// A thread-level CUDA simulator: objx's kernel sources (.cu) compile with the host C++ compiler and
// run on the CPU with CUDA's execution semantics, so that CI without a GPU still runs them.
//
// Every thread of a block is a cooperatively scheduled fiber with its own stack. A thread runs until
// it reaches a barrier (__syncthreads, __syncwarp, a warp shuffle) or returns; the order in which the
// runnable threads run changes at every barrier (a seeded permutation, see OBJX_CUDA_SIM_SEED), so a
// read of another thread's __shared__ write without a barrier gets a wrong value. Divergent barriers
// and deadlocks abort with the kernel, the block and where each thread waits. Blocks go to a pool
// of OS threads, each block wholly on one of them; launches are synchronous.
//
// What it cannot show: real warp scheduling (lanes run one after another, never in lockstep), the
// GPU memory model (fences, caches, ordering between blocks beyond atomics), performance, and
// device math: exp, log, ... are the host's libm, so float results may differ from CUDA's by
// rounding (CUDA's expf, logf, ... and their fast intrinsics differ from glibc's by a few ulp).
//
// Environment: OBJX_CUDA_SIM_THREADS (OS threads running blocks; default: the hardware's),
// OBJX_CUDA_SIM_STACK_KB (stack per simulated thread; default 256),
// OBJX_CUDA_SIM_SEED (the scheduling orders; default 0), OBJX_CUDA_SIM_REPORT=FILE (coverage report,
// see cuda_sim.cpp). Include only in the simulation build: OBJX_CUDA_SIM defined, not under nvcc.
#if !defined(OBJX_CUDA_SIM) || defined(__CUDACC__)
#error "sim/cuda_sim.h is for the simulation build only (OBJX_CUDA_SIM, host compiler)"
#endif

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>  // libstdc++'s <math.h> puts the float overloads in the global namespace, as CUDA's
                   // headers do: an unqualified exp(float) in a kernel is the float function there too
#include <source_location>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// __shared__ is one variable per block. The scheduler runs every block wholly on one OS thread, one
// block at a time per OS thread, so an OS-thread-local static is exactly the running block's copy.
// Like CUDA's shared memory it is not cleared between blocks (it holds what the last block left).
#define __shared__ static thread_local

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

typedef struct CUstream_st* cudaStream_t;  // launches are synchronous: the stream is not used

constexpr int warpSize = 32;

namespace objx::sim {
namespace detail {

// What threadIdx, blockIdx, blockDim and gridDim read: the running simulated thread's context, which
// the scheduler points `current` at before every switch into a thread.
struct ThreadContext {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
inline thread_local const ThreadContext* current = nullptr;

enum class WarpOp : std::uint8_t { sync, shfl_idx, shfl_up, shfl_down, shfl_xor };

// Barriers (cuda_sim.cpp). Kernels may keep __shared__ values in registers across a call the
// compiler can prove does not touch them, so the inline wrappers below add a full compiler barrier.
void sync_block(const std::source_location& site);
std::uint64_t warp_exchange(WarpOp op, unsigned mask, std::uint64_t value, std::uint32_t lane_arg, int width,
                            unsigned value_bytes, const std::source_location& site);

inline void compiler_barrier() { asm volatile("" ::: "memory"); }

template <typename T>
T shuffle(WarpOp op, unsigned mask, T v, std::uint32_t lane_arg, int width, const std::source_location& site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  compiler_barrier();
  bits = warp_exchange(op, mask, bits, lane_arg, width, sizeof(T), site);
  compiler_barrier();
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// CUDA's atomics are relaxed: atomic with respect to every block, ordering nothing else.
template <typename T>
T atomic_min(T* address, T v) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}

template <typename T>
T atomic_max(T* address, T v) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (v > old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}

template <typename T>
T atomic_cas(T* address, T compare, T v) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, v, std::memory_order_relaxed);
  return compare;  // the old value, whether or not it was swapped
}

// One launch as the scheduler sees it: run_thread(args) runs the kernel as one thread.
struct KernelLaunch {
  const char* kernel_name;
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;
  void (*run_thread)(const void* args);
  const void* args;
};
void run_grid(const KernelLaunch& launch);

// "const char* ...kernel_name() [with auto K = objx::cuda::{anonymous}::k<float, float>]" -> "k<float, float>"
std::string kernel_name_from_signature(std::string_view pretty_function);

template <auto K>
const char* kernel_name() {
  static const std::string name = kernel_name_from_signature(__PRETTY_FUNCTION__);
  return name.c_str();
}

template <typename Kernel>
struct KernelParams;
template <typename... P>
struct KernelParams<void (*)(P...)> {
  using type = std::tuple<P...>;
};

}  // namespace detail

// launch<&kernel>(grid, block, shared_bytes, stream)(args...): converts args to the kernel's
// parameter types, as a CUDA launch does, and runs the whole grid before returning.
template <auto K>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, std::size_t shared_bytes) : grid_(grid), block_(block), shared_bytes_(shared_bytes) {}

  template <typename... A>
  void operator()(A&&... args) const {
    using Params = typename detail::KernelParams<decltype(K)>::type;
    static_assert(sizeof...(A) == std::tuple_size_v<Params>, "wrong number of kernel arguments");
    const Params params(std::forward<A>(args)...);
    detail::run_grid({detail::kernel_name<K>(), grid_, block_, shared_bytes_, &run_thread<Params>, &params});
  }

 private:
  template <typename Params>
  static void run_thread(const void* params) {  // each thread gets its own copy of the arguments
    std::apply(K, *static_cast<const Params*>(params));
  }

  dim3 grid_, block_;
  std::size_t shared_bytes_;
};

template <auto K>
Launch<K> launch(dim3 grid, dim3 block, std::size_t shared_bytes = 0, cudaStream_t = nullptr) {
  return Launch<K>(grid, block, shared_bytes);
}

}  // namespace objx::sim

#ifndef OBJX_LAUNCH
#define OBJX_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::objx::sim::launch<&__VA_ARGS__>(grid, block, shared_bytes, stream)
#endif

#define threadIdx (::objx::sim::detail::current->thread_idx)
#define blockIdx (::objx::sim::detail::current->block_idx)
#define blockDim (::objx::sim::detail::current->block_dim)
#define gridDim (::objx::sim::detail::current->grid_dim)

// The barrier intrinsics take the caller's source location so that a deadlock report says where
// each thread waits.
inline void __syncthreads(std::source_location site = std::source_location::current()) {
  ::objx::sim::detail::compiler_barrier();
  ::objx::sim::detail::sync_block(site);
  ::objx::sim::detail::compiler_barrier();
}

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location site = std::source_location::current()) {
  ::objx::sim::detail::shuffle(::objx::sim::detail::WarpOp::sync, mask, 0, 0, warpSize, site);
}

// The warp shuffles, overloaded for the types CUDA overloads them for. Lanes whose source lane lies
// outside their segment of `width` lanes get their own value back, as on the GPU.
#define OBJX_SIM_SHUFFLES(T)                                                                               \
  inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize,                             \
                       std::source_location site = std::source_location::current()) {                      \
    return ::objx::sim::detail::shuffle(::objx::sim::detail::WarpOp::shfl_idx, mask, v,                    \
                                        static_cast<std::uint32_t>(src_lane), width, site);                 \
  }                                                                                                        \
  inline T __shfl_up_sync(unsigned mask, T v, unsigned int delta, int width = warpSize,                    \
                          std::source_location site = std::source_location::current()) {                   \
    return ::objx::sim::detail::shuffle(::objx::sim::detail::WarpOp::shfl_up, mask, v, delta, width, site); \
  }                                                                                                        \
  inline T __shfl_down_sync(unsigned mask, T v, unsigned int delta, int width = warpSize,                  \
                            std::source_location site = std::source_location::current()) {                 \
    return ::objx::sim::detail::shuffle(::objx::sim::detail::WarpOp::shfl_down, mask, v, delta, width,      \
                                        site);                                                             \
  }                                                                                                        \
  inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize,                        \
                           std::source_location site = std::source_location::current()) {                  \
    return ::objx::sim::detail::shuffle(::objx::sim::detail::WarpOp::shfl_xor, mask, v,                    \
                                        static_cast<std::uint32_t>(lane_mask), width, site);                \
  }
OBJX_SIM_SHUFFLES(int)
OBJX_SIM_SHUFFLES(unsigned int)
OBJX_SIM_SHUFFLES(long)
OBJX_SIM_SHUFFLES(unsigned long)
OBJX_SIM_SHUFFLES(long long)
OBJX_SIM_SHUFFLES(unsigned long long)
OBJX_SIM_SHUFFLES(float)
OBJX_SIM_SHUFFLES(double)
#undef OBJX_SIM_SHUFFLES

#define OBJX_SIM_ATOMICS(T)                                                                   \
  inline T atomicMin(T* address, T v) { return ::objx::sim::detail::atomic_min(address, v); } \
  inline T atomicMax(T* address, T v) { return ::objx::sim::detail::atomic_max(address, v); } \
  inline T atomicAdd(T* address, T v) {                                                       \
    return std::atomic_ref<T>(*address).fetch_add(v, std::memory_order_relaxed);              \
  }                                                                                           \
  inline T atomicExch(T* address, T v) {                                                      \
    return std::atomic_ref<T>(*address).exchange(v, std::memory_order_relaxed);               \
  }                                                                                           \
  inline T atomicCAS(T* address, T compare, T v) { return ::objx::sim::detail::atomic_cas(address, compare, v); }
OBJX_SIM_ATOMICS(int)
OBJX_SIM_ATOMICS(unsigned int)
OBJX_SIM_ATOMICS(unsigned long long)
#undef OBJX_SIM_ATOMICS
inline long long atomicMin(long long* address, long long v) { return ::objx::sim::detail::atomic_min(address, v); }
inline long long atomicMax(long long* address, long long v) { return ::objx::sim::detail::atomic_max(address, v); }
inline float atomicAdd(float* address, float v) {
  return std::atomic_ref<float>(*address).fetch_add(v, std::memory_order_relaxed);
}
inline double atomicAdd(double* address, double v) {
  return std::atomic_ref<double>(*address).fetch_add(v, std::memory_order_relaxed);
}
inline float atomicExch(float* address, float v) {
  return std::atomic_ref<float>(*address).exchange(v, std::memory_order_relaxed);
}
