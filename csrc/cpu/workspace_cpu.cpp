// Per-thread kept scratch buffers: see convx/workspace.h.
#include "convx/workspace.h"

#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <new>

namespace convx {
namespace {

struct Kept {
  void* ptr = nullptr;
  size_t bytes = 0;
  bool in_use = false;
};

std::atomic<size_t> g_bytes_held{0};

struct ThreadWorkspace {
  Kept slots[int(WorkspaceSlot::Count)];
  void release_idle() {
    for (Kept& k : slots)
      if (!k.in_use && k.ptr) {
        std::free(k.ptr);
        g_bytes_held -= k.bytes;
        k = Kept{};
      }
  }
  ~ThreadWorkspace() { release_idle(); }
};

thread_local ThreadWorkspace t_workspace;

void* aligned_bytes(size_t bytes) {
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return p;
}

size_t round_up_64(size_t bytes) { return (bytes + 63) / 64 * 64; }

}  // namespace

void* workspace_acquire(WorkspaceSlot slot, size_t bytes, bool& kept) {
  bytes = round_up_64(bytes == 0 ? 1 : bytes);
  Kept& k = t_workspace.slots[int(slot)];
  if (bytes > kKeepMaxBytes || k.in_use) {
    kept = false;
    return aligned_bytes(bytes);
  }
  if (k.bytes < bytes) {
    std::free(k.ptr);
    g_bytes_held -= k.bytes;
    k.ptr = nullptr;
    k.bytes = 0;
    k.ptr = aligned_bytes(bytes);
    k.bytes = bytes;
    g_bytes_held += bytes;
  }
  k.in_use = true;
  kept = true;
  return k.ptr;
}

void workspace_return(WorkspaceSlot slot, void* ptr, bool kept) {
  if (kept)
    t_workspace.slots[int(slot)].in_use = false;
  else
    std::free(ptr);
}

size_t workspace_bytes_held() { return g_bytes_held.load(); }

void workspace_release() {
  t_workspace.release_idle();
#pragma omp parallel if (!omp_in_parallel())
  t_workspace.release_idle();
}

}  // namespace convx
