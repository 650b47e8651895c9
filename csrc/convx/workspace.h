// Scratch memory kept between calls, per thread and per slot.
//
// Why: a buffer of a few MB allocated afresh by every call comes from mmap, goes
// back to the kernel when freed, and page-faults in again on the next call. For
// the AlphaGo body at batch 16 that was ~2,700 faults, about 3.5 ms of a 11 ms
// layer on the development VM (torch pays the same for its own buffers). A kept
// buffer is faulted in once.
//
// A Scratch is the calling thread's kept buffer for its slot, grown when a call
// needs more (64-byte aligned, contents undefined). Requests above kKeepMaxBytes,
// and a slot this thread already holds (a nested use), get a buffer of their own,
// freed at scope exit, so a slot is never shared by two live Scratch objects.
// OpenMP worker threads keep their own buffers, like any other thread.
#pragma once
#include <cstddef>
#include <cstdint>

namespace convx {

enum class WorkspaceSlot : int {
  GemmA,         // the GEMM's packed A block
  GemmB,         // the GEMM's packed B block
  GemmAcc,       // partial sums of the dot-product GEMM
  Filters,       // transformed or packed filters
  FiltersAux,    // a second filter copy (flipped filters, before packing)
  Input,         // transformed or padded input (Winograd V, shifted planes, im2col columns)
  Output,        // products before the output transform (Winograd M, shifted wide output)
  Aux,           // per-block gathers and partial sums
  Patches,       // per-thread transform scratch
  PatchesAux,    // a second one
  Count
};

constexpr size_t kKeepMaxBytes = size_t(64) << 20;

void* workspace_acquire(WorkspaceSlot slot, size_t bytes, bool& kept);
void workspace_return(WorkspaceSlot slot, void* ptr, bool kept);

// Bytes held in kept buffers by all threads.
size_t workspace_bytes_held();
// Frees the kept buffers of the calling thread and of the threads of an OpenMP
// team it starts (the ones convx's parallel regions use); buffers in use stay.
void workspace_release();

template <typename T>
class Scratch {
 public:
  Scratch(WorkspaceSlot slot, int64_t count)
      : slot_(slot),
        ptr_(static_cast<T*>(workspace_acquire(slot, size_t(count > 0 ? count : 1) * sizeof(T), kept_))) {}
  ~Scratch() { workspace_return(slot_, ptr_, kept_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return ptr_; }

 private:
  WorkspaceSlot slot_;
  bool kept_ = false;
  T* ptr_;
};

}  // namespace convx
