// Runtime of the CUDA host emulation (include/cuda_runtime.h): fibers, collectives, launch checks, atomics and
// global-memory statistics and the emulated device's properties.
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_runtime.h"

namespace emu {

Builtins builtins;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kWarp = 32;

// Properties of the emulated device, set from Python (emu_configure).
struct Device {
  int sm_count = 2;
  int major = 8;
  int minor = 0;
} device;

// Whether a shuffle that reads a lane outside its mask fails the launch (default) or reads an undefined value,
// emulated as all-one bits (NaN for floating types), so that a kernel that uses it gets a wrong result.
bool strict_shuffle_sources = true;

cudaError_t last_error = cudaSuccess;
std::string last_message;

enum class State { kReady, kWaiting, kDone };

struct Fiber {
  ucontext_t context;
  State state = State::kReady;
  uint3 thread_idx{};
  int linear = 0;
  // The collective this fiber waits at.
  Collective kind = Collective::kShflSync;
  const char* file = nullptr;
  int line = 0;
  unsigned mask = 0;
  int arg = 0;
  int width = 0;
  uint64_t bits = 0;
  uint64_t result = 0;
  long collectives = 0;      // collectives completed so far
  long atomics_in_epoch = 0; // atomics since the last collective
  // Global accesses since the last collective per instrumented access site (see record_access).
  std::unordered_map<uintptr_t, long> accesses_in_epoch;
};

// Sector statistics: atomics of one warp-wide instruction are those of the warp's lanes with equal
// (collectives completed, atomic ordinal since then); the sectors of an instruction are the distinct 32-byte
// segments its lanes touch.
struct AtomicKey {
  long warp;
  long epoch;
  long ordinal;
  bool operator<(const AtomicKey& o) const {
    return std::tie(warp, epoch, ordinal) < std::tie(o.warp, o.epoch, o.ordinal);
  }
};
struct AtomicInstruction {
  std::set<uintptr_t> sectors;
  long floats = 0;
};
struct AtomicStats {
  double floats = 0;
  double sector_ops = 0;
  double instructions = 0;
  double lane_ops = 0;
} stats;

// Global-memory statistics of the counting build (emulator.py `build_emulator(counting=True)`): its kernel code is
// compiled with GCC's outlined address-sanitizer checks, so that every load and store calls record_access with
// the address, the size and the call's return address, which names the access site (one machine instruction of
// the host code, standing for one memory instruction of the kernel). A warp-wide memory instruction is the
// accesses of a warp's lanes with equal (collectives completed, site, occurrence of the site since then): lanes
// that run the same code issue the same sequence of accesses per site; lanes that diverge reach other sites or
// fewer occurrences, i.e. other instructions, as on a GPU. Its sectors are the distinct 32-byte segments the
// lanes touch. Accesses wider than 16 bytes (a GPU's widest load) count as one instruction per 16 bytes. Counts are
// kept per buffer (an instruction whose lanes touch two buffers counts as one per buffer).
struct AccessKey {
  int buffer;
  long warp;
  long epoch;
  uintptr_t site;
  long occurrence;
  long chunk;
  bool operator<(const AccessKey& o) const {
    return std::tie(buffer, warp, epoch, site, occurrence, chunk) <
           std::tie(o.buffer, o.warp, o.epoch, o.site, o.occurrence, o.chunk);
  }
};
struct AccessStats {
  double sectors = 0;
  double instructions = 0;
  double lane_accesses = 0;
};
// Per buffer of global_ranges, in its order.
struct MemoryStats {
  AccessStats loads;
  AccessStats stores;
};
std::vector<MemoryStats> memory_stats;
constexpr size_t kWidestAccess = 16;

// [begin, end) of the buffers the launch's kernels may read or write (emu_add_global_range); every other address
// (fiber stacks: the kernels' locals; the emulated shared memory; the runtime's own data) is not global memory.
std::vector<std::pair<uintptr_t, uintptr_t>> global_ranges;

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  uint3 block_idx{};
  long block_linear = 0;
  int running = -1;
  bool failed = false;
  std::map<AtomicKey, AtomicInstruction> atomics;
  // Sectors (with repeats) of each warp-wide load and store instruction of the block so far.
  std::map<AccessKey, std::vector<uintptr_t>> loads;
  std::map<AccessKey, std::vector<uintptr_t>> stores;
};

Block* block = nullptr;
std::vector<std::unique_ptr<char[]>> stacks;

void fail(const std::string& message) {
  if (block->failed) return;
  block->failed = true;
  last_error = cudaErrorLaunchFailure;
  last_message = message;
}

void set_error(cudaError_t error, const std::string& message) {
  last_error = error;
  last_message = message;
}

void switch_to(int index) {
  Fiber& f = block->fibers[index];
  block->running = index;
  builtins.thread_idx = f.thread_idx;
  swapcontext(&block->scheduler, &f.context);
  block->running = -1;
}

void fiber_entry() {
  (*block->body)();
  block->fibers[block->running].state = State::kDone;
  // Returning switches to uc_link (the scheduler).
}

std::string where(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

std::string lane_name(const Fiber& f) {
  return "thread (" + std::to_string(f.thread_idx.x) + ", " + std::to_string(f.thread_idx.y) + ", " +
         std::to_string(f.thread_idx.z) + ") of block (" + std::to_string(block->block_idx.x) + ", " +
         std::to_string(block->block_idx.y) + ", " + std::to_string(block->block_idx.z) + ")";
}

const char* kind_name(Collective kind) {
  switch (kind) {
    case Collective::kShflSync:
      return "__shfl_sync";
    case Collective::kShflXor:
      return "__shfl_xor_sync";
    case Collective::kShflUp:
      return "__shfl_up_sync";
    case Collective::kShflDown:
      return "__shfl_down_sync";
    case Collective::kSyncWarp:
      return "__syncwarp";
    case Collective::kSyncThreads:
      return "__syncthreads";
  }
  return "?";
}

bool same_collective(const Fiber& a, const Fiber& b) {
  return a.kind == b.kind && a.line == b.line && a.mask == b.mask && a.width == b.width &&
         a.collectives == b.collectives && std::strcmp(a.file, b.file) == 0;
}

// Source lane of a shuffle, or -1 when the lane keeps its own value.
int shuffle_source(const Fiber& f, int lane) {
  if (f.kind == Collective::kSyncWarp || f.kind == Collective::kSyncThreads) return -1;  // barriers move no data
  const int segment = lane / f.width * f.width;
  switch (f.kind) {
    case Collective::kShflSync:
      return segment + (f.arg % f.width + f.width) % f.width;
    case Collective::kShflXor: {
      const int src = lane ^ f.arg;
      return src >= segment + f.width ? -1 : src;
    }
    case Collective::kShflUp:
      return lane - f.arg < segment ? -1 : lane - f.arg;
    case Collective::kShflDown:
      return lane + f.arg >= segment + f.width ? -1 : lane + f.arg;
    default:
      return -1;
  }
}

void complete(const std::vector<int>& members) {
  for (int index : members) {
    Fiber& f = block->fibers[index];
    const int lane = f.linear % kWarp;
    const int src = shuffle_source(f, lane);
    f.result = f.bits;
    if (src >= 0) {
      const int src_index = index - lane + src;
      if (!((f.mask >> src) & 1u) && !strict_shuffle_sources) {
        f.result = ~uint64_t(0);
        continue;
      }
      if (!((f.mask >> src) & 1u)) {
        fail(kind_name(f.kind) + std::string(" at ") + where(f) + ": " + lane_name(f) + " reads lane " +
             std::to_string(src) + ", which is not in the mask");
        return;
      }
      f.result = block->fibers[src_index].bits;
    }
  }
  for (int index : members) {
    Fiber& f = block->fibers[index];
    f.state = State::kReady;
    ++f.collectives;
    f.atomics_in_epoch = 0;
    f.accesses_in_epoch.clear();
  }
}

// Completes every collective whose participants have all arrived; fails on a participant that exited or waits
// elsewhere. Returns whether any completed.
bool resolve() {
  bool progressed = false;
  const int count = int(block->fibers.size());
  std::vector<bool> handled(count, false);
  for (int i = 0; i < count && !block->failed; ++i) {
    Fiber& f = block->fibers[i];
    if (f.state != State::kWaiting || handled[i]) continue;
    std::vector<int> members;
    if (f.kind == Collective::kSyncThreads) {
      for (int k = 0; k < count; ++k) members.push_back(k);
    } else {
      if (f.width < 1 || f.width > kWarp || (f.width & (f.width - 1)) != 0) {
        fail(kind_name(f.kind) + std::string(" at ") + where(f) + ": width " + std::to_string(f.width) +
             " is not a power of two <= 32");
        return false;
      }
      const int warp_base = i - f.linear % kWarp;
      for (int lane = 0; lane < kWarp; ++lane) {
        if (!((f.mask >> lane) & 1u)) continue;
        if (warp_base + lane >= count) {
          fail(kind_name(f.kind) + std::string(" at ") + where(f) + ": mask names lane " + std::to_string(lane) +
               ", which does not exist in this block");
          return false;
        }
        members.push_back(warp_base + lane);
      }
      if (!((f.mask >> (f.linear % kWarp)) & 1u)) {
        fail(kind_name(f.kind) + std::string(" at ") + where(f) + ": the calling " + lane_name(f) +
             " is not in its own mask");
        return false;
      }
    }
    for (int m : members) {
      const Fiber& other = block->fibers[m];
      if (other.state == State::kDone) {
        fail(kind_name(f.kind) + std::string(" at ") + where(f) + " by " + lane_name(f) + ": " + lane_name(other) +
             " named by the mask has exited");
        return false;
      }
      if (other.state == State::kWaiting && !same_collective(f, other)) {
        fail(kind_name(f.kind) + std::string(" at ") + where(f) + " by " + lane_name(f) + ": " + lane_name(other) +
             " waits at " + kind_name(other.kind) + " at " + where(other) + " instead");
        return false;
      }
    }
    bool all_arrived = true;
    for (int m : members) all_arrived = all_arrived && block->fibers[m].state == State::kWaiting;
    for (int m : members) handled[m] = true;
    if (!all_arrived) continue;
    complete(members);
    progressed = true;
  }
  return progressed;
}

void flush_atomics() {
  for (const auto& entry : block->atomics) {
    stats.sector_ops += double(entry.second.sectors.size());
    stats.floats += double(entry.second.floats);
    stats.instructions += 1;
  }
  block->atomics.clear();
}

void flush_accesses(std::map<AccessKey, std::vector<uintptr_t>>& instructions, AccessStats MemoryStats::*kind) {
  for (auto& entry : instructions) {
    std::vector<uintptr_t>& sectors = entry.second;
    std::sort(sectors.begin(), sectors.end());
    AccessStats& out = memory_stats[entry.first.buffer].*kind;
    out.sectors += double(std::unique(sectors.begin(), sectors.end()) - sectors.begin());
    out.instructions += 1;
  }
  instructions.clear();
}

// The index of the global buffer holding `address`, or -1.
int global_buffer(uintptr_t address) {
  for (size_t k = 0; k < global_ranges.size(); ++k) {
    if (address >= global_ranges[k].first && address < global_ranges[k].second) return int(k);
  }
  return -1;
}

void run_block(Block& b, dim3 block_dim) {
  const int threads = int(block_dim.x * block_dim.y * block_dim.z);
  while (int(stacks.size()) < threads) stacks.emplace_back(new char[kStackBytes]);
  b.fibers.assign(threads, Fiber{});
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.linear = t;
    f.thread_idx = {unsigned(t % block_dim.x), unsigned(t / block_dim.x % block_dim.y),
                    unsigned(t / (block_dim.x * block_dim.y))};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[t].get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  while (!b.failed) {
    bool ran = false;
    for (int t = 0; t < threads && !b.failed; ++t) {
      if (b.fibers[t].state != State::kReady) continue;
      switch_to(t);
      ran = true;
    }
    if (b.failed) break;
    const bool resolved = resolve();
    bool all_done = true;
    for (const Fiber& f : b.fibers) all_done = all_done && f.state == State::kDone;
    if (all_done) break;
    if (!ran && !resolved && !b.failed) {
      for (const Fiber& f : b.fibers) {
        if (f.state == State::kWaiting) {
          fail(std::string("deadlock: ") + lane_name(f) + " waits forever at " + kind_name(f.kind) + " at " +
               where(f));
          break;
        }
      }
    }
  }
  flush_atomics();
  flush_accesses(b.loads, &MemoryStats::loads);
  flush_accesses(b.stores, &MemoryStats::stores);
}

bool valid_configuration(dim3 grid, dim3 block_dim, size_t shared_bytes) {
  const uint64_t threads = uint64_t(block_dim.x) * block_dim.y * block_dim.z;
  std::string problem;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0) problem = "a zero grid or block dimension";
  else if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) problem = "grid dimensions over the limit";
  else if (block_dim.x > 1024u || block_dim.y > 1024u || block_dim.z > 64u || threads > 1024u)
    problem = "block dimensions over the limit";
  else if (shared_bytes > 48 * 1024) problem = "more than 48 KiB of dynamic shared memory";
  if (problem.empty()) return true;
  set_error(cudaErrorInvalidConfiguration,
            "invalid launch configuration: " + problem + " (grid " + std::to_string(grid.x) + "x" +
                std::to_string(grid.y) + "x" + std::to_string(grid.z) + ", block " + std::to_string(block_dim.x) +
                "x" + std::to_string(block_dim.y) + "x" + std::to_string(block_dim.z) + ")");
  return false;
}

}  // namespace

uint64_t collective(Collective kind, const char* file, int line, unsigned mask, uint64_t bits, int arg, int width) {
  Fiber& f = block->fibers[block->running];
  f.state = State::kWaiting;
  f.kind = kind;
  f.file = file;
  f.line = line;
  f.mask = mask;
  f.arg = arg;
  f.width = width;
  f.bits = bits;
  const int index = block->running;
  swapcontext(&f.context, &block->scheduler);
  // Resumed by the scheduler once the collective completed.
  builtins.thread_idx = block->fibers[index].thread_idx;
  return block->fibers[index].result;
}

void record_atomic(const void* address, int bytes, int floats) {
  Fiber& f = block->fibers[block->running];
  const long warp = block->block_linear * 64 + f.linear / kWarp;
  AtomicInstruction& instruction = block->atomics[{warp, f.collectives, f.atomics_in_epoch++}];
  const uintptr_t start = reinterpret_cast<uintptr_t>(address);
  for (uintptr_t s = start / 32; s <= (start + bytes - 1) / 32; ++s) instruction.sectors.insert(s);
  instruction.floats += floats;
  stats.lane_ops += 1;
}

// One lane's global load or store (see AccessKey); accesses outside a kernel (host code) or outside the global
// buffers are not counted.
void record_access(uintptr_t address, size_t bytes, bool store, uintptr_t site) {
  const int buffer = global_buffer(address);
  if (block == nullptr || block->running < 0 || buffer < 0) return;
  Fiber& f = block->fibers[block->running];
  const long warp = block->block_linear * 64 + f.linear / kWarp;
  const long occurrence = f.accesses_in_epoch[site]++;
  auto& instructions = store ? block->stores : block->loads;
  for (size_t chunk = 0; chunk * kWidestAccess < bytes; ++chunk) {
    const uintptr_t first = address + chunk * kWidestAccess;
    const uintptr_t last = address + std::min(bytes, (chunk + 1) * kWidestAccess) - 1;
    std::vector<uintptr_t>& sectors = instructions[{buffer, warp, f.collectives, site, occurrence, long(chunk)}];
    for (uintptr_t s = first / 32; s <= last / 32; ++s) sectors.push_back(s);
  }
  (store ? memory_stats[buffer].stores : memory_stats[buffer].loads).lane_accesses += 1;
}

bool run_grid(dim3 grid, dim3 block_dim, size_t shared_bytes, const std::function<void()>& body) {
  if (!valid_configuration(grid, block_dim, shared_bytes)) return false;
  Block b;
  b.body = &body;
  block = &b;
  builtins.block_dim = block_dim;
  builtins.grid_dim = grid;
  for (unsigned z = 0; z < grid.z && !b.failed; ++z) {
    for (unsigned y = 0; y < grid.y && !b.failed; ++y) {
      for (unsigned x = 0; x < grid.x && !b.failed; ++x) {
        b.block_idx = {x, y, z};
        b.block_linear = (long(z) * grid.y + y) * grid.x + x;
        builtins.block_idx = b.block_idx;
        run_block(b, block_dim);
      }
    }
  }
  block = nullptr;
  return !b.failed;
}

}  // namespace emu

cudaError_t cudaGetLastError() {
  const cudaError_t error = emu::last_error;
  emu::last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return emu::last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimX:
      *value = 2147483647;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = emu::device.sm_count;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = emu::device.major;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = emu::device.minor;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// C interface for the Python driver (emulator.py).
extern "C" {

void emu_configure(int sm_count, int major, int minor) {
  emu::device.sm_count = sm_count;
  emu::device.major = major;
  emu::device.minor = minor;
}

const char* emu_last_message() { return emu::last_message.c_str(); }

void emu_clear_error() {
  emu::last_error = cudaSuccess;
  emu::last_message.clear();
}

// floats added, 32-byte sector operations, warp-wide atomic instructions, per-lane atomic operations.
void emu_atomic_stats(double* out) {
  out[0] = emu::stats.floats;
  out[1] = emu::stats.sector_ops;
  out[2] = emu::stats.instructions;
  out[3] = emu::stats.lane_ops;
}

void emu_reset_atomic_stats() { emu::stats = {}; }

void emu_set_strict_shuffle_sources(int strict) { emu::strict_shuffle_sources = strict != 0; }

// The buffers whose accesses the counting build counts as global memory (see record_access), numbered in the order
// added; clearing them resets the statistics.
void emu_add_global_range(const void* begin, size_t bytes) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(begin);
  emu::global_ranges.emplace_back(start, start + bytes);
  emu::memory_stats.emplace_back();
}

void emu_clear_global_ranges() {
  emu::global_ranges.clear();
  emu::memory_stats.clear();
}

// Of buffer `index`'s loads, then stores: distinct 32-byte sectors summed over warp-wide instructions, warp-wide
// instructions, per-lane accesses. Zero unless the library is a counting build.
void emu_memory_stats(int index, double* out) {
  const emu::MemoryStats& buffer = emu::memory_stats.at(index);
  const emu::AccessStats* kinds[] = {&buffer.loads, &buffer.stores};
  for (int k = 0; k < 2; ++k) {
    out[3 * k] = kinds[k]->sectors;
    out[3 * k + 1] = kinds[k]->instructions;
    out[3 * k + 2] = kinds[k]->lane_accesses;
  }
}

// The checks GCC's -fsanitize=kernel-address emits with --param asan-instrumentation-with-call-threshold=0 in the
// counting build's kernel code: called before every load / store with its address (and size for other widths).
#define EMU_ACCESS_HOOKS(bytes)                                                                                 \
  void __asan_load##bytes##_noabort(uintptr_t address) {                                                        \
    emu::record_access(address, bytes, false, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));        \
  }                                                                                                            \
  void __asan_store##bytes##_noabort(uintptr_t address) {                                                       \
    emu::record_access(address, bytes, true, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));         \
  }
EMU_ACCESS_HOOKS(1)
EMU_ACCESS_HOOKS(2)
EMU_ACCESS_HOOKS(4)
EMU_ACCESS_HOOKS(8)
EMU_ACCESS_HOOKS(16)
#undef EMU_ACCESS_HOOKS

void __asan_loadN_noabort(uintptr_t address, size_t bytes) {
  emu::record_access(address, bytes, false, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
}
void __asan_storeN_noabort(uintptr_t address, size_t bytes) {
  emu::record_access(address, bytes, true, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
}

// Emitted before calls that do not return (throw), where a sanitizer runtime unpoisons the stack, and around a
// translation unit's dynamic initialisers, where it checks the initialisation order: nothing to do here.
void __asan_handle_no_return() {}
void __asan_before_dynamic_init(const char*) {}
void __asan_after_dynamic_init() {}
}
