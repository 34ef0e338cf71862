#pragma once
// Names an op's host entry point on an Nsight Systems timeline (a no-op without the NVTX headers).
#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
namespace objx {
struct NvtxRange {
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
}  // namespace objx
#else
namespace objx {
struct NvtxRange {
  explicit NvtxRange(const char*) {}
};
}  // namespace objx
#endif
