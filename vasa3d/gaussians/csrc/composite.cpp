// Front-to-back alpha compositing of projected 2D Gaussians on the CPU, with a
// hand-written backward. Same rules as vasa3d.gaussians.composite.composite_torch
// (gsplat 1.5): pixel centres at (x + 0.5, y + 0.5); sigma = 0.5 (a dx^2 + c dy^2)
// + b dx dy with d = pixel - mean; alpha = min(0.999, opacity exp(-sigma)); skip where
// sigma < 0 or alpha < 1/255; a pixel stops, without the Gaussian that would do it,
// once its transmittance would fall to 1e-4 or below.
//
// Layout: work is split by tiles (dynamic, longest lists first); inside a tile the
// loop over Gaussians is outer and the loop over the tile's pixels is inner, on small
// structure-of-arrays buffers, so that the compiler vectorises over pixels (float32:
// a polynomial exp; masks as 0/1 values and ternary selects, a form GCC if-converts),
// and only over the rows of the tile that the Gaussian can reach (see load_splat).
// Per pixel the forward keeps the final transmittance and the end of the prefix of the
// tile's list it used, so the backward walks only that prefix, back to front.
// The backward writes one gradient row per (tile, Gaussian) entry of the bins and
// sums the rows per Gaussian afterwards: race-free and independent of the thread count.
//
// Ops (registered as torch.ops.vasa3d_composite.*):
//   forward(means2d [N,2], conics [N,3], opacities [N], colors [N,K], tile_offsets
//           [T+1] i64, flat_ids [M] i64, tiles_x, tiles_y, tile_size, width, height)
//     -> colors [H,W,K], alphas [H,W,1], t_final [H,W], last [H,W] i32
//   backward(same inputs..., t_final, last, v_colors [H,W,K], v_alphas [H,W,1])
//     -> v_means2d [N,2], v_conics [N,3], v_opacities [N], v_colors [N,K]
// The tile kernels themselves live in tiles.h (shared with the fused renderer, render.cpp).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "tiles.h"

namespace {

using namespace vasa3d;

template <typename S>
Scene<S> make_scene(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                    const at::Tensor& colors, const at::Tensor& offsets, const at::Tensor& ids,
                    int64_t tiles_x, int64_t tiles_y, int64_t ts, int64_t width, int64_t height) {
  return Scene<S>{means2d.data_ptr<S>(), conics.data_ptr<S>(), opacities.data_ptr<S>(), colors.data_ptr<S>(),
                  offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), means2d.size(0), colors.size(1),
                  ids.numel(), tiles_x, tiles_y, ts, width, height};
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                  const at::Tensor& colors, const at::Tensor& offsets, const at::Tensor& ids,
                  int64_t tiles_x, int64_t tiles_y, int64_t ts, int64_t width, int64_t height) {
  const auto dtype = means2d.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "composite_cpp: float32 or float64 expected");
  const int64_t n = means2d.size(0);
  for (const at::Tensor* t : {&means2d, &conics, &opacities, &colors, &offsets, &ids}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "composite_cpp: contiguous CPU tensors expected");
  }
  TORCH_CHECK(conics.scalar_type() == dtype && opacities.scalar_type() == dtype && colors.scalar_type() == dtype,
              "composite_cpp: means2d, conics, opacities and colors must share a dtype");
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "composite_cpp: means2d must be [N, 2]");
  TORCH_CHECK(conics.dim() == 2 && conics.size(0) == n && conics.size(1) == 3, "composite_cpp: conics must be [N, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "composite_cpp: opacities must be [N]");
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == n, "composite_cpp: colors must be [N, K]");
  TORCH_CHECK(offsets.scalar_type() == at::kLong && ids.scalar_type() == at::kLong, "composite_cpp: int64 bins");
  TORCH_CHECK(ts > 0 && width > 0 && height > 0, "composite_cpp: tile size and image size must be positive");
  TORCH_CHECK(tiles_x * ts >= width && tiles_y * ts >= height, "composite_cpp: tiles do not cover the image");
  TORCH_CHECK(offsets.numel() == tiles_x * tiles_y + 1, "composite_cpp: tile_offsets must have n_tiles + 1 entries");
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[tiles_x * tiles_y] == ids.numel(), "composite_cpp: tile_offsets do not span flat_ids");
  for (int64_t t = 0; t < tiles_x * tiles_y; ++t) TORCH_CHECK(off[t + 1] >= off[t], "composite_cpp: offsets decrease");
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) TORCH_CHECK(id[i] >= 0 && id[i] < n, "composite_cpp: id out of range");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_forward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities, const at::Tensor& colors,
    const at::Tensor& offsets, const at::Tensor& ids, int64_t tiles_x, int64_t tiles_y, int64_t ts,
    int64_t width, int64_t height) {
  check_inputs(means2d, conics, opacities, colors, offsets, ids, tiles_x, tiles_y, ts, width, height);
  const auto opts = means2d.options();
  at::Tensor out_c = at::zeros({height, width, colors.size(1)}, opts);
  at::Tensor out_a = at::zeros({height, width, 1}, opts);
  at::Tensor out_t = at::ones({height, width}, opts);
  at::Tensor out_last = at::zeros({height, width}, opts.dtype(at::kInt));
  auto run = [&](auto zero) {
    using S = decltype(zero);
    Scene<S> sc = make_scene<S>(means2d, conics, opacities, colors, offsets, ids, tiles_x, tiles_y, ts,
                                width, height);
    const std::vector<double> row_bounds = sc.m > sc.n ? row_reaches(sc) : std::vector<double>();
    if (!row_bounds.empty()) sc.reach = row_bounds.data();
    S *c = out_c.data_ptr<S>(), *a = out_a.data_ptr<S>(), *t = out_t.data_ptr<S>();
    int32_t* l = out_last.data_ptr<int32_t>();
    for_each_busy_tile(sc, false, [&](int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside) {
      forward_tile(sc, tile, s, inside, c, a, t, l);
    });
  };
  if (means2d.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return {out_c, out_a, out_t, out_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_backward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities, const at::Tensor& colors,
    const at::Tensor& offsets, const at::Tensor& ids, int64_t tiles_x, int64_t tiles_y, int64_t ts,
    int64_t width, int64_t height, const at::Tensor& t_final, const at::Tensor& last,
    const at::Tensor& v_colors, const at::Tensor& v_alphas) {
  check_inputs(means2d, conics, opacities, colors, offsets, ids, tiles_x, tiles_y, ts, width, height);
  const int64_t n = means2d.size(0), k = colors.size(1), q = kRowFixed + k;
  TORCH_CHECK(t_final.numel() == height * width && last.numel() == height * width && last.scalar_type() == at::kInt,
              "composite_cpp: bad saved tensors");
  TORCH_CHECK(v_colors.numel() == height * width * k && v_alphas.numel() == height * width &&
              v_colors.is_contiguous() && v_alphas.is_contiguous() &&
              v_colors.scalar_type() == means2d.scalar_type() && v_alphas.scalar_type() == means2d.scalar_type(),
              "composite_cpp: output gradients must be contiguous [H, W, K] and [H, W, 1] of the input dtype");
  const auto opts = means2d.options();
  at::Tensor v_means = at::zeros({n, 2}, opts), v_conics = at::zeros({n, 3}, opts);
  at::Tensor v_opac = at::zeros({n}, opts), v_cols = at::zeros({n, k}, opts);
  at::Tensor rows = at::empty({ids.numel(), q}, opts);  // one gradient row per bin entry
  auto run = [&](auto zero) {
    using S = decltype(zero);
    Scene<S> sc = make_scene<S>(means2d, conics, opacities, colors, offsets, ids, tiles_x, tiles_y, ts,
                                width, height);
    const std::vector<double> row_bounds = sc.m > sc.n ? row_reaches(sc) : std::vector<double>();
    if (!row_bounds.empty()) sc.reach = row_bounds.data();
    const S *vc = v_colors.data_ptr<S>(), *va = v_alphas.data_ptr<S>(), *tf = t_final.data_ptr<S>();
    const int32_t* l = last.data_ptr<int32_t>();
    S* r = rows.data_ptr<S>();
    // Rows of empty tiles do not exist; every busy tile writes all of its rows.
    for_each_busy_tile(sc, true, [&](int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside) {
      backward_tile(sc, tile, s, inside, vc, va, tf, l, r);
    });
    S *gm = v_means.data_ptr<S>(), *gc = v_conics.data_ptr<S>(), *go = v_opac.data_ptr<S>();
    S* gk = v_cols.data_ptr<S>();
    for (int64_t i = 0; i < sc.m; ++i) {  // fixed order: deterministic sums
      const int64_t g = sc.ids[i];
      const S* row = r + i * q;
      gm[2 * g] += row[0], gm[2 * g + 1] += row[1];
      gc[3 * g] += row[2], gc[3 * g + 1] += row[3], gc[3 * g + 2] += row[4];
      go[g] += row[5];
      for (int64_t c = 0; c < k; ++c) gk[g * k + c] += row[kRowFixed + c];
    }
  };
  if (means2d.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return {v_means, v_conics, v_opac, v_cols};
}

}  // namespace

TORCH_LIBRARY(vasa3d_composite, m) {
  m.def("forward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor tile_offsets, "
        "Tensor flat_ids, int tiles_x, int tiles_y, int tile_size, int width, int height) "
        "-> (Tensor, Tensor, Tensor, Tensor)",
        &composite_forward);
  m.def("backward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor tile_offsets, "
        "Tensor flat_ids, int tiles_x, int tiles_y, int tile_size, int width, int height, Tensor t_final, "
        "Tensor last, Tensor v_colors, Tensor v_alphas) -> (Tensor, Tensor, Tensor, Tensor)",
        &composite_backward);
}
