// The Python module objx._C: importing it registers the ops (static initialisers of the
// TORCH_LIBRARY blocks) and exposes how this build was made.
#include <pybind11/pybind11.h>

#ifndef OBJX_VERSION
#define OBJX_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "objx compiled ops (registered under torch.ops.objx)";
  m.attr("__version__") = OBJX_VERSION;
  m.attr("torch_version") = OBJX_TORCH_VERSION;
#ifdef OBJX_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("cuda_archs") = OBJX_CUDA_ARCHS;
#ifdef OBJX_CUDA_SIM
  m.attr("cuda_sim") = true;  // the CUDA kernels serve CPU tensors through csrc/sim
#else
  m.attr("cuda_sim") = false;
#endif
}
