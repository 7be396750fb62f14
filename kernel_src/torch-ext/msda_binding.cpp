// Input validation and device dispatch of the multi-scale deformable attention ops (registered in
// torch_binding.cpp). Messages name the offending argument.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <tuple>

#include "dcnv3_common/msda_sampling.h"
#include "argument_checks.h"
#include "torch_binding.h"

namespace {

using argument_checks::supported_dtype;

void check_defined_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK(t.defined(), "msda: `", name, "` is undefined");
  TORCH_CHECK(t.dim() == rank, "msda: `", name, "` must be a ", rank, "-D ", layout, " tensor, got ", t.dim(),
              "-D shape ", t.sizes());
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& value) {
  TORCH_CHECK(t.device() == value.device(), "msda: `", name, "` is on ", t.device(), " but `value` is on ",
              value.device());
}

void check_like_value(const at::Tensor& t, const char* name, const at::Tensor& value) {
  check_same_device(t, name, value);
  TORCH_CHECK(t.scalar_type() == value.scalar_type(), "msda: `", name, "` has dtype ", t.scalar_type(),
              " but `value` has dtype ", value.scalar_type());
}

void check_index_tensor(const at::Tensor& t, const char* name, const at::Tensor& value) {
  check_same_device(t, name, value);
  TORCH_CHECK(t.scalar_type() == at::kLong, "msda: `", name, "` must be int64, got ", t.scalar_type());
}

// The level table must describe `value` exactly: positive sizes, H_l * W_l summing to S, and level_start_index the
// running sum. The kernels index `value` with it unchecked, so this guards every read. On CUDA the two small
// tensors are copied to the host once (one synchronisation per call).
void check_level_table(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t spatial) {
  const at::Tensor table = at::cat({spatial_shapes.reshape(-1), level_start_index}).cpu();
  const int64_t* v = table.const_data_ptr<int64_t>();
  const int64_t levels = spatial_shapes.size(0);
  int64_t start = 0;
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t height = v[2 * l], width = v[2 * l + 1];
    TORCH_CHECK(height > 0 && width > 0, "msda: `spatial_shapes` level ", l, " has size ", height, "x", width,
                "; sizes must be positive");
    TORCH_CHECK(v[2 * levels + l] == start, "msda: `level_start_index`[", l, "] is ", v[2 * levels + l],
                " but the levels before it in `spatial_shapes` hold ", start, " positions");
    int64_t size = 0;
    TORCH_CHECK(!c10::mul_overflows(height, width, &size) && !c10::add_overflows(start, size, &start),
                "msda: `spatial_shapes` sizes overflow int64");
  }
  TORCH_CHECK(start == spatial, "msda: `spatial_shapes` describe ", start, " positions but `value` has ", spatial,
              " (dimension 1)");
}

msda::Params make_msda_params(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights) {
  check_defined_rank(value, "value", 4, "(N, S, M, D)");
  TORCH_CHECK(supported_dtype(value.scalar_type()), "msda: `value` must be float32, float64, float16 or bfloat16, got ",
              value.scalar_type());
  check_defined_rank(spatial_shapes, "spatial_shapes", 2, "(L, 2)");
  check_index_tensor(spatial_shapes, "spatial_shapes", value);
  check_defined_rank(level_start_index, "level_start_index", 1, "(L,)");
  check_index_tensor(level_start_index, "level_start_index", value);
  check_defined_rank(sampling_locations, "sampling_locations", 6, "(N, Q, M, L, P, 2)");
  check_like_value(sampling_locations, "sampling_locations", value);
  check_defined_rank(attention_weights, "attention_weights", 5, "(N, Q, M, L, P)");
  check_like_value(attention_weights, "attention_weights", value);

  msda::Params p{};
  p.batch = value.size(0);
  p.spatial = value.size(1);
  p.heads = value.size(2);
  p.channels = value.size(3);
  p.levels = spatial_shapes.size(0);
  p.queries = sampling_locations.size(1);
  p.points = sampling_locations.size(4);
  TORCH_CHECK(spatial_shapes.size(1) == 2, "msda: `spatial_shapes` must have shape (L, 2), got ",
              spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.size(0) == p.levels, "msda: `level_start_index` has ", level_start_index.size(0),
              " entries but `spatial_shapes` has ", p.levels, " levels");
  TORCH_CHECK(sampling_locations.size(0) == p.batch && sampling_locations.size(2) == p.heads &&
                  sampling_locations.size(3) == p.levels && sampling_locations.size(5) == 2,
              "msda: `sampling_locations` has shape ", sampling_locations.sizes(), " but must be (N, Q, M, L, P, 2) = (",
              p.batch, ", Q, ", p.heads, ", ", p.levels, ", P, 2) for `value` ", value.sizes(), " and ", p.levels,
              " levels");
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), "msda: `attention_weights` has shape ",
              attention_weights.sizes(), " but must be (N, Q, M, L, P) = ", sampling_locations.sizes().slice(0, 5),
              " as `sampling_locations`");
  check_level_table(spatial_shapes, level_start_index, p.spatial);
  return p;
}

}  // namespace

at::Tensor msda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const msda::Params p = make_msda_params(value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights);
  const at::Tensor v = value.contiguous(), shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const at::Tensor loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
#if defined(CUDA_KERNEL)
  if (v.is_cuda()) return msda::forward_cuda(v, shapes, starts, loc, attn, p);
#endif
  TORCH_CHECK(v.is_cpu(), "msda: no implementation for device ", v.device(), " in this build");
  return msda::forward_cpu(v, shapes, starts, loc, attn, p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights) {
  const msda::Params p = make_msda_params(value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights);
  check_defined_rank(grad_output, "grad_output", 3, "(N, Q, M * D)");
  check_like_value(grad_output, "grad_output", value);
  TORCH_CHECK(grad_output.size(0) == p.batch && grad_output.size(1) == p.queries &&
                  grad_output.size(2) == p.heads * p.channels,
              "msda: `grad_output` has shape ", grad_output.sizes(), " but the output shape is (", p.batch, ", ",
              p.queries, ", ", p.heads * p.channels, ")");
  const at::Tensor g = grad_output.contiguous(), v = value.contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const at::Tensor loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
#if defined(CUDA_KERNEL)
  if (v.is_cuda()) return msda::backward_cuda(g, v, shapes, starts, loc, attn, p);
#endif
  TORCH_CHECK(v.is_cpu(), "msda: no implementation for device ", v.device(), " in this build");
  return msda::backward_cpu(g, v, shapes, starts, loc, attn, p);
}
