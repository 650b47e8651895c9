// Per-thread kept scratch blocks, used as stacks: see convx/workspace.h.
#include "convx/workspace.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define CONVX_MAP_BLOCKS 1
#endif

namespace convx {
namespace {

std::atomic<size_t> g_bytes_held{0};

size_t round_up_64(size_t bytes) { return (bytes + 63) / 64 * 64; }

void* aligned_bytes(size_t bytes) {
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return p;
}

// Under AddressSanitizer, no blocks: every Scratch gets a buffer of its own, with
// the sanitizer's red zones around it.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUseBlocks = false;
#else
constexpr bool kUseBlocks = true;
#endif

struct Block {
  char* ptr;
  size_t capacity, top;  // top: bytes in use from its start
};

// Blocks are pages mapped for them alone, not malloc's: a block given back is
// returned to the kernel at once, so when a call's blocks become one the
// resident set does not hold both (from malloc, freed blocks below its mmap
// threshold stayed resident beside the new one), and long-lived blocks do not
// sit in the heap between the tensors that come and go.
char* map_block(size_t bytes) {
#ifdef CONVX_MAP_BLOCKS
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return static_cast<char*>(p);
#else
  return static_cast<char*>(aligned_bytes(bytes));
#endif
}

void unmap_block(char* p, size_t bytes) {
#ifdef CONVX_MAP_BLOCKS
  munmap(p, bytes);
#else
  (void)bytes;
  std::free(p);
#endif
}

// A thread's blocks. Between calls there is at most one, as large as the most
// any call has needed at once. A call that needs more chains further blocks for
// what does not fit, each a stack above the one before, rather than buffers of
// their own: requests made and given back again and again within one call (a
// GEMM's packing buffers, a transform's per-region scratch) then reuse a block,
// where buffers of their own came and went through malloc and left the resident
// set 2-3 MB higher (256 channels at 19x19, the AlphaGo body at batch 16). Once
// nothing is in the blocks, they become one again.
struct ThreadWorkspace {
  std::vector<Block> blocks;
  size_t kept_live = 0;  // bytes of the live Scratch objects in blocks
  size_t most_kept = 0;  // the most `kept_live` has been since the blocks were last released

  Block& add_block(size_t capacity) {
    blocks.push_back({map_block(capacity), capacity, 0});
    g_bytes_held += capacity;
    return blocks.back();
  }
  void free_blocks() {
    for (const Block& b : blocks) {
      unmap_block(b.ptr, b.capacity);
      g_bytes_held -= b.capacity;
    }
    blocks.clear();
  }
  void* take(size_t bytes) {
    // Above the deepest block in use (regions are given back in reverse order,
    // so the blocks after it are empty), the first with room.
    size_t first = 0;
    for (size_t i = blocks.size(); i-- > 0;)
      if (blocks[i].top > 0) {
        first = i;
        break;
      }
    for (size_t i = first; i < blocks.size(); ++i)
      if (blocks[i].top + bytes <= blocks[i].capacity) {
        void* p = blocks[i].ptr + blocks[i].top;
        blocks[i].top += bytes;
        return p;
      }
    Block& b = add_block(bytes);
    b.top = bytes;
    return b.ptr;
  }
  void give_back(void* ptr, size_t bytes) {
    for (size_t i = blocks.size(); i-- > 0;) {
      Block& b = blocks[i];
      if (static_cast<char*>(ptr) >= b.ptr && static_cast<char*>(ptr) < b.ptr + b.capacity) {
        if (static_cast<char*>(ptr) + bytes == b.ptr + b.top) b.top -= bytes;
        return;
      }
    }
  }
  // Called when nothing is in the blocks: one block, as large as the most any call
  // has needed at once (up to kKeepMaxBytes), so that call fits it next time.
  void settle() {
    for (Block& b : blocks) b.top = 0;
    const size_t want = std::min(most_kept, kKeepMaxBytes);
    if (blocks.size() == 1 && blocks[0].capacity >= want) return;
    free_blocks();
    if (want > 0) add_block(want);
  }
  void release_idle() {
    if (kept_live != 0) return;
    free_blocks();
    most_kept = 0;
  }
  ~ThreadWorkspace() { free_blocks(); }
};

thread_local ThreadWorkspace t_workspace;

}  // namespace

void* workspace_acquire(size_t& bytes, bool& kept) {
  bytes = round_up_64(bytes == 0 ? 1 : bytes);
  ThreadWorkspace& w = t_workspace;
  kept = kUseBlocks && bytes <= kKeepMaxBytes;
  if (!kept) return aligned_bytes(bytes);
  w.kept_live += bytes;
  w.most_kept = std::max(w.most_kept, w.kept_live);
  return w.take(bytes);
}

void workspace_return(void* ptr, size_t bytes, bool kept) {
  if (!kept) {
    std::free(ptr);
    return;
  }
  ThreadWorkspace& w = t_workspace;
  w.kept_live -= bytes;
  w.give_back(ptr, bytes);
  if (w.kept_live == 0) w.settle();
}

size_t workspace_bytes_held() { return g_bytes_held.load(); }

bool workspace_keeps_blocks() { return kUseBlocks; }

void workspace_release() {
  t_workspace.release_idle();
#pragma omp parallel if (!omp_in_parallel())
  t_workspace.release_idle();
}

}  // namespace convx
