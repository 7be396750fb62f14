// C entry points over the launch functions of memory_probe.cu, for test_cuda_emu_memory_counters.py.
namespace probe {
int launch_gather(const float* in, float* out, int stride);
int launch_copy_packs(const float* in, float* out);
int launch_diverging_sum(const float* in, float* out);
}  // namespace probe

extern "C" {
int probe_gather(const float* in, float* out, int stride) { return probe::launch_gather(in, out, stride); }
int probe_copy_packs(const float* in, float* out) { return probe::launch_copy_packs(in, out); }
int probe_diverging_sum(const float* in, float* out) { return probe::launch_diverging_sum(in, out); }
}
