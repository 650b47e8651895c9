// Scratch memory kept between calls: one block per thread, used as a stack.
//
// Why kept: a buffer of a few MB allocated afresh by every call comes from mmap,
// goes back to the kernel when freed, and page-faults in again on the next call.
// For the AlphaGo body at batch 16 that was ~2,700 faults, about 3.5 ms of a 11 ms
// layer on the development VM (torch pays the same for its own buffers). A kept
// buffer is faulted in once.
//
// Why one block: the buffers a call needs at once (a GEMM's packed operands,
// Winograd's transformed filters, tiles and products, ...) are carved out of the
// thread's block one after another and given back in reverse order, so what a
// thread keeps is the most any single call needed at once. With a kept buffer per
// role instead, a model kept the sum of each role's largest use over all its
// layers: AlphaGo training at batch 16 kept 16.6 MB where its largest layer needs
// 9.4 MB.
//
// A Scratch is a run of the calling thread's block (64-byte aligned, contents
// undefined), given back when it goes out of scope; Scratch objects are scoped,
// so they are given back in reverse order. What the block has no room for (the
// first call of a larger layer) goes to further blocks chained for the rest of
// the call; once nothing is in them, its blocks become one, as large as
// the most it was asked for at once, so the next such call fits. A request past
// kKeepMaxBytes gets a buffer of its own, freed at scope exit. OpenMP worker
// threads keep their own blocks, like any other thread. Under AddressSanitizer
// every Scratch is a buffer of its own, so a kernel that runs past its buffer is
// caught even where the next buffer would follow it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace convx {

constexpr size_t kKeepMaxBytes = size_t(64) << 20;

// bytes is rounded up to a multiple of 64; workspace_return takes it back.
void* workspace_acquire(size_t& bytes, bool& kept);
void workspace_return(void* ptr, size_t bytes, bool kept);

// Bytes held in kept blocks by all threads.
size_t workspace_bytes_held();
// Whether blocks are kept at all (false under AddressSanitizer).
bool workspace_keeps_blocks();
// Frees the kept blocks of the calling thread and of the threads of an OpenMP
// team it starts (the ones convx's parallel regions use), where nothing is in them.
void workspace_release();

template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t count)
      : bytes_(size_t(count > 0 ? count : 1) * sizeof(T)),
        ptr_(static_cast<T*>(workspace_acquire(bytes_, kept_))) {}
  ~Scratch() { workspace_return(ptr_, bytes_, kept_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return ptr_; }

 private:
  bool kept_ = false;
  size_t bytes_;
  T* ptr_;
};

}  // namespace convx
