#pragma once
// Which kernels serve which dispatch key, decided once for every op family: each family's entry
// file registers its op functions, templated on the family's kernel table, through OBJX_REGISTER.
// CPU tensors get the family's CPU table (<family>/cpu.cpp) and CUDA tensors its CUDA table
// (<family>/cuda.cu). The simulation build (OBJX_CUDA_SIM) compiles the CUDA sources with the host
// compiler and serves CPU tensors with the CUDA table, so the test suite runs the CUDA kernels.
#include <torch/library.h>

#if defined(OBJX_CUDA_SIM)
#define OBJX_HOST_TABLE(cpu_table, cuda_table) cuda_table
#else
#define OBJX_HOST_TABLE(cpu_table, cuda_table) cpu_table
#endif

#if defined(OBJX_WITH_CUDA) && !defined(OBJX_CUDA_SIM)
#define OBJX_REGISTER_CUDA(register_ops, cuda_table) \
  TORCH_LIBRARY_IMPL(objx, CUDA, m) { register_ops<cuda_table>(m); }
#else
#define OBJX_REGISTER_CUDA(register_ops, cuda_table)
#endif

// register_ops: template <const Table&> void (torch::Library&), calling m.impl for each op.
#define OBJX_REGISTER(register_ops, cpu_table, cuda_table)                                     \
  TORCH_LIBRARY_IMPL(objx, CPU, m) { register_ops<OBJX_HOST_TABLE(cpu_table, cuda_table)>(m); } \
  OBJX_REGISTER_CUDA(register_ops, cuda_table)
