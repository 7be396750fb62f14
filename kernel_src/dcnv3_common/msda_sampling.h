// Multi-scale deformable attention (MSDA, Deformable DETR): shapes of one call and the sampling formula shared by
// the CPU loops and the CUDA kernels. Plain C++ (no torch headers) so that the CUDA translation unit stays cheap.
//
// value (N, S, M, D) holds L flattened feature levels (level l: H_l x W_l pixels from row level_start[l]);
// sampling_locations (N, Q, M, L, P, 2) are (x, y) in [0, 1] per level, attention_weights (N, Q, M, L, P);
// output (N, Q, M * D) = sum over (l, p) of weight * bilinear sample of level l at the location, read as
// Transformers' PyTorch version does it (`grid_sample`, align_corners=False, zero padding): pixel centres at
// (i + 0.5) / size.
#pragma once

#include <cstdint>

#include "dcnv3_common/dcnv3_sampling.h"  // DCNV3_HOST_DEVICE

namespace msda {

struct Params {
  int64_t batch;     // N
  int64_t spatial;   // S = sum of H_l * W_l
  int64_t heads;     // M
  int64_t channels;  // D, per head
  int64_t queries;   // Q
  int64_t levels;    // L
  int64_t points;    // P, per head and level
};

// Where one sample falls on its level: the top-left corner (y0, x0) of the bilinear cell, the fractions inside it
// and which of the four corners lie on the level (the others read grid_sample's zero padding).
template <typename acc_t>
struct Cell {
  int64_t y0;
  int64_t x0;
  acc_t fy;
  acc_t fx;
  bool top;     // row y0 is on the level
  bool bottom;  // row y0 + 1
  bool left;    // column x0
  bool right;   // column x0 + 1
};

// The cell of normalised location (loc_x, loc_y) on a height x width level; false when no corner is on the level
// (the sample is all padding and contributes nothing), which also catches NaN locations before any integer
// conversion. The unnormalisation follows grid_sample's CPU kernel: g = 2 * loc - 1, x = (g + 1) * (W / 2) - 0.5,
// so that float32 results agree with it to rounding.
template <typename acc_t>
DCNV3_HOST_DEVICE bool locate_cell(acc_t loc_x, acc_t loc_y, int64_t height, int64_t width, Cell<acc_t>& cell) {
  const acc_t gx = acc_t(2) * loc_x - acc_t(1);
  const acc_t gy = acc_t(2) * loc_y - acc_t(1);
  const acc_t x = (gx + acc_t(1)) * (acc_t(width) / acc_t(2)) - acc_t(0.5);
  const acc_t y = (gy + acc_t(1)) * (acc_t(height) / acc_t(2)) - acc_t(0.5);
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < acc_t(width) && y < acc_t(height))) return false;
  // x, y > -1: truncating x + 1 is floor(x) + 1 (no libm call, exact for the int range the levels have).
  cell.x0 = static_cast<int64_t>(x + acc_t(1)) - 1;
  cell.y0 = static_cast<int64_t>(y + acc_t(1)) - 1;
  cell.fx = x - acc_t(cell.x0);
  cell.fy = y - acc_t(cell.y0);
  cell.top = cell.y0 >= 0;
  cell.bottom = cell.y0 + 1 < height;
  cell.left = cell.x0 >= 0;
  cell.right = cell.x0 + 1 < width;
  return true;
}

}  // namespace msda
