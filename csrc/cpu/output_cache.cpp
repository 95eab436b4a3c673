// The output cache (see output_cache.h for why): a c10::Allocator whose DataPtr deleter puts
// a block back on a free list of its size instead of freeing it, plus the ops that let
// Python read and configure it (resnet_fast/cpu_cache.py):
//   cpu_cache_info() -> [cached bytes, limit bytes, hits, misses]
//   cpu_cache_set_limit(limit_bytes)   (also frees what the new limit leaves over)
//   cpu_cache_empty()                  (frees every cached block)
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <pthread.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace resnet_fast::cpu {
namespace {

constexpr size_t kMinCachedBytes = size_t{1} << 20;  // below this glibc rarely faults: heap reuse
constexpr size_t kGranule = size_t{64} << 10;        // sizes rounded up to this before matching

struct Block {
  void* ptr;
  size_t bytes;
};

// Physical memory, or the container's memory limit (cgroup v2, then v1) when that is lower:
// in a container the machine's memory can be far more than the process may use.
size_t usable_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  size_t usable = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream file(path);
    unsigned long long limit = 0;
    if (file >> limit && limit > 0) usable = std::min(usable, static_cast<size_t>(limit));  // "max" fails
  }
  return usable;
}

size_t default_limit() {
  const size_t eighth = usable_memory() / 8;
  const char* env = std::getenv("RESNET_FAST_CPU_CACHE_BYTES");
  if (env == nullptr || *env == '\0') return eighth;
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(env, &end, 10);
  if (errno != 0 || *end != '\0' || *env == '-') {
    TORCH_WARN("resnet_fast: RESNET_FAST_CPU_CACHE_BYTES=", env,
               " is not a byte count (an integer >= 0); using 1/8 of the memory available");
    return eighth;
  }
  return static_cast<size_t>(value);
}

class OutputCache final : public c10::Allocator {
 public:
  OutputCache() : limit_(default_limit()) {}

  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = n < kMinCachedBytes ? n : (n + kGranule - 1) / kGranule * kGranule;
    Block* block = take(bytes);
    if (block == nullptr) block = new Block{bytes > 0 ? c10::alloc_cpu(bytes) : nullptr, bytes};
    return {block->ptr, block, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(limit_), hits_, misses_};
  }

  void set_limit(size_t limit) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = limit;  // blocks released from now on obey it
    }
    evict_to(limit);
  }

  void empty() { evict_to(0); }

  // Fork (DataLoader workers): the child must not inherit a mutex locked by another thread.
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork() { mutex_.unlock(); }

 private:
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(bytes);
    if (bytes < kMinCachedBytes || it == free_.end() || it->second.empty()) {
      ++misses_;
      return nullptr;
    }
    Block* block = it->second.back();
    it->second.pop_back();
    cached_ -= bytes;
    ++hits_;
    return block;
  }

  static void release(void* ctx);

  // Frees cached blocks until at most `keep` bytes are held (outside the lock).
  void evict_to(size_t keep) {
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [bytes, blocks] : free_) {
        while (cached_ > keep && !blocks.empty()) {
          evicted.push_back(blocks.back());
          blocks.pop_back();
          cached_ -= bytes;
        }
      }
    }
    destroy(evicted);
  }

  void give_back(Block* block) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (block->bytes >= kMinCachedBytes && cached_ + block->bytes <= limit_) {
        free_[block->bytes].push_back(block);
        cached_ += block->bytes;
        return;
      }
    }
    destroy({block});
  }

  static void destroy(const std::vector<Block*>& blocks) {
    for (Block* block : blocks) {
      if (block->ptr != nullptr) c10::free_cpu(block->ptr);
      delete block;
    }
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<Block*>> free_;  // rounded size -> free blocks
  size_t cached_ = 0;
  size_t limit_;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors holding its blocks may outlive static destructors at exit.
OutputCache& cache() {
  static OutputCache* instance = [] {
    auto* created = new OutputCache();
    pthread_atfork([] { cache().lock_for_fork(); }, [] { cache().unlock_after_fork(); },
                   [] { cache().unlock_after_fork(); });
    return created;
  }();
  return *instance;
}

void OutputCache::release(void* ctx) { cache().give_back(static_cast<Block*>(ctx)); }

std::vector<int64_t> cpu_cache_info() { return cache().info(); }

void cpu_cache_set_limit(int64_t limit_bytes) {
  TORCH_CHECK(limit_bytes >= 0, "resnet_fast::cpu_cache_set_limit: expected limit_bytes >= 0, got ", limit_bytes);
  cache().set_limit(static_cast<size_t>(limit_bytes));
}

void cpu_cache_empty() { cache().empty(); }

}  // namespace

at::Tensor empty_activation_like(const at::Tensor& y) {
  const size_t bytes = static_cast<size_t>(y.numel()) * y.element_size();
  if (bytes < kMinCachedBytes || cache().limit() == 0) return at::empty_like(y);
  return at::detail::empty_strided_generic(y.sizes(), y.strides(), &cache(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), y.scalar_type());
}

}  // namespace resnet_fast::cpu

TORCH_LIBRARY_FRAGMENT(resnet_fast, m) {
  m.def("cpu_cache_info() -> int[]", &resnet_fast::cpu::cpu_cache_info);
  m.def("cpu_cache_set_limit(int limit_bytes) -> ()", &resnet_fast::cpu::cpu_cache_set_limit);
  m.def("cpu_cache_empty() -> ()", &resnet_fast::cpu::cpu_cache_empty);
}
