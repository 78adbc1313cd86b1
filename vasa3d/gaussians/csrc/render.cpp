// Projection (projection.h) and tile binning ops, and the fused forward-only renderer built from
// them and the tile compositor of tiles.h. Conventions are those of vasa3d.gaussians.projection
// (gsplat 1.5: EWA splatting, Jacobian at a mean clamped to 1.3x the field of view, eps2d
// low-pass, radius ceil(3.33 sigma)) and vasa3d.gaussians.composite.bin_gaussians (the tile
// box floor(centre - radius) .. ceil(centre + radius), each tile's list front to back,
// depth ties in index order); both are tested against those torch versions.
//
// Binning is a counting sort: Gaussians are ordered by depth once (LSD radix sort on the
// float bits, stable), then dealt into their tiles in that order, so every tile's list comes
// out sorted without sorting the (tile, Gaussian) pairs. The dealing runs in chunks of the depth
// order, one per worker, each chunk writing its entries of a tile after the earlier chunks'.
//
// Tile cull (the fused renderer always; bin when given conics and opacities): the radius box is
// 3.33 sigma whatever the opacity, and square whatever the ellipse's tilt, so many of its tiles
// hold no pixel centre where the Gaussian reaches alpha >= 1/255 and the compositor would skip it
// there anyway. Per row of tiles, the entries are limited to the x span of the ellipse where it
// does (Ellipse below, with a margin far above float rounding). The compositor's output and its
// gradients do not change (a dropped entry's gradient row was zero); on a fitted 30k head at
// 512 px it leaves about 3/4 of the entries.
//
// Ops (added to torch.ops.vasa3d_composite.*):
//   project(means [N,3], quats [N,4], scales [N,3], viewmats [C,4,4], Ks [C,3,3], width, height, eps2d,
//           near_plane, far_plane, radius_clip) -> means2d [C,N,2], conics [C,N,3], depths [C,N], radii [C,N,2]
//   project_backward(means, quats, scales, viewmats, Ks, width, height, eps2d, radii, v_means2d,
//           v_conics, v_depths) -> v_means [N,3], v_quats [N,4], v_scales [N,3] (the training path)
//   bin(means2d [N,2], radii [N,2] i32, depths [N], width, height, tile_size, conics [N,3]?, opacities [N]?)
//     -> tile_offsets [T+1] i64, flat_ids [M] i64; with conics and opacities, only the tiles where
//        the Gaussian can reach alpha >= 1/255 at a pixel centre (the tile cull below)
//   render_forward(means [N,3], quats [N,4], scales [N,3], opacities [N], colors [N,K],
//                  viewmats [C,4,4], Ks [C,3,3], backgrounds [C,K] (or empty), width, height,
//                  tile_size, eps2d, near_plane, far_plane, radius_clip, min_opacity)
//     -> rgb [C,H,W,K] (over the background), alpha [C,H,W,1], depth [C,H,W,1] (expected z),
//        means2d [C,N,2], conics [C,N,3], depths [C,N], radii [C,N,2] i32, stage_ms [3] f64
//        (projection, binning, compositing, summed over the cameras)
//   Gaussians with opacity below min_opacity get radii 0 (culled); with min_opacity <= 1/255
//   the image is the one the compositing rules give without the cull.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "projection.h"
#include "tiles.h"

namespace {

using namespace vasa3d;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Order-preserving unsigned key of a float.
inline uint32_t float_key(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Indices of the visible Gaussians sorted by depth, stable (ties keep index order).
template <typename S>
std::vector<int64_t> depth_order(const int32_t* radii, const S* depths, int64_t n) {
  std::vector<int64_t> ids;
  ids.reserve(n);
  for (int64_t g = 0; g < n; ++g)
    if (radii[2 * g] > 0 && radii[2 * g + 1] > 0) ids.push_back(g);
  if constexpr (sizeof(S) == 4) {  // LSD radix sort, 3 passes of 11 bits
    std::vector<int64_t> tmp(ids.size());
    std::vector<uint32_t> keys(ids.size()), tmp_keys(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) keys[i] = float_key(depths[ids[i]]);
    for (int shift = 0; shift < 33; shift += 11) {
      int64_t count[2049] = {0};
      for (uint32_t k : keys) ++count[((k >> shift) & 2047u) + 1];
      for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
      for (size_t i = 0; i < ids.size(); ++i) {
        const int64_t dst = count[(keys[i] >> shift) & 2047u]++;
        tmp[dst] = ids[i], tmp_keys[dst] = keys[i];
      }
      ids.swap(tmp), keys.swap(tmp_keys);
    }
  } else {
    std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return depths[a] < depths[b]; });
  }
  return ids;
}

struct Bins {
  std::vector<int64_t> offsets, ids;  // ids: positions in the depth order (rank), or Gaussian indices
  int64_t tiles_x, tiles_y;
};

// What a tile cull needs of each Gaussian (indexed like m2d); absent: the radius box alone.
template <typename S>
struct Reach {
  const S* conics;  // [N, 3]
  const S* opac;  // [N]
  double alpha_min;
};

// The region where a Gaussian can reach alpha >= alpha_min: the ellipse 0.5 d^T conic d <= s with
// s = ln(opacity / alpha_min), given a margin far above float rounding, so that a tile it leaves
// out is one where the compositor would skip the Gaussian at every pixel centre.
struct Ellipse {
  double mx = 0, my = 0, a = 0, b = 0, c = 0, det = 0, s = 0;
  bool empty = false, degenerate = true;  // fainter than alpha_min everywhere; conic unusable (radius box)

  Ellipse() = default;

  template <typename S>
  Ellipse(const S* m2d, const Reach<S>& reach, int64_t g) {
    mx = m2d[2 * g], my = m2d[2 * g + 1];
    a = reach.conics[3 * g], b = reach.conics[3 * g + 1], c = reach.conics[3 * g + 2];
    det = a * c - b * b;
    const double s_max = std::log(static_cast<double>(reach.opac[g]) / reach.alpha_min);
    degenerate = !(a > 0 && c > 0 && det > 0 && std::isfinite(s_max) && std::isfinite(mx) && std::isfinite(my));
    empty = !degenerate && s_max < -1e-3;  // as load_splat: such a Gaussian reaches no pixel
    s = std::max(s_max, 0.0) * (1.0 + 1e-3) + 1e-2;
  }
  double half_height() const { return std::sqrt(2.0 * s * a / det); }
  // [lo, hi]: the x offsets from the centre that the ellipse covers at some dy in [dy0, dy1]
  // (a band it meets). Its right edge is concave in dy and its left edge convex, so each extreme
  // is at the band's ends or at the ellipse's own widest point.
  void span(double dy0, double dy1, double& lo, double& hi) const {
    const double half_width = std::sqrt(2.0 * s * c / det), dy_widest = b * half_width / c;
    const auto root = [&](double dy) { return std::sqrt(std::max(2.0 * a * s - det * dy * dy, 0.0)); };
    const auto right = [&](double dy) { return (-b * dy + root(dy)) / a; };
    const auto left = [&](double dy) { return (-b * dy - root(dy)) / a; };
    hi = (-dy_widest >= dy0 && -dy_widest <= dy1) ? half_width : std::max(right(dy0), right(dy1));
    lo = (dy_widest >= dy0 && dy_widest <= dy1) ? -half_width : std::min(left(dy0), left(dy1));
    const double slack = 1e-3 * half_width + 1e-3;
    lo -= slack, hi += slack;
  }
};

// Deals the depth-ordered Gaussians into the tiles their radius box touches; with `reach`, only
// the tiles of that box whose pixel centres the Gaussian's Ellipse covers (per row of tiles, the
// ellipse's x span over the row's centres). Each entry is the Gaussian's rank in `order`
// (use_rank) or its index.
template <typename S>
Bins bin(const std::vector<int64_t>& order, const S* m2d, const int32_t* radii, int64_t width, int64_t height,
         int64_t ts, bool use_rank, const Reach<S>* reach = nullptr) {
  Bins b;
  b.tiles_x = (width + ts - 1) / ts, b.tiles_y = (height + ts - 1) / ts;
  const int64_t n_tiles = b.tiles_x * b.tiles_y, n = static_cast<int64_t>(order.size());
  const auto clamp_tile = [](double v, int64_t hi) {
    return static_cast<int32_t>(std::clamp<double>(v, 0.0, static_cast<double>(hi)));
  };
  const double tsd = static_cast<double>(ts);
  // Pass 1, in chunks of the depth order (one per worker): each Gaussian's tiles, appended to its
  // chunk's hits, and the chunk's count per tile.
  const int64_t chunks = n < 4096 ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), 8));
  struct Chunk {
    std::vector<int64_t> first;  // Gaussian r's tiles are hits[first[r - lo], first[r - lo + 1])
    std::vector<int32_t> hits;
    std::vector<int64_t> count;  // [n_tiles]
  };
  std::vector<Chunk> parts(chunks);
  const auto chunk_range = [&](int64_t i) { return std::make_pair(n * i / chunks, n * (i + 1) / chunks); };
  at::parallel_for(0, chunks, 1, [&](int64_t c_lo, int64_t c_hi) {
    for (int64_t ci = c_lo; ci < c_hi; ++ci) {
      const auto [r_lo, r_hi] = chunk_range(ci);
      Chunk& part = parts[ci];
      part.first.assign(r_hi - r_lo + 1, 0);
      part.count.assign(n_tiles, 0);
      part.hits.reserve(8 * (r_hi - r_lo));
      for (int64_t r = r_lo; r < r_hi; ++r) {
        const int64_t g = order[r];
        part.first[r - r_lo] = static_cast<int64_t>(part.hits.size());
        // the radius box in tiles, as bin_gaussians computes it (float32)
        const float cx = static_cast<float>(m2d[2 * g]) / float(ts), cy = static_cast<float>(m2d[2 * g + 1]) / float(ts);
        const float ex = float(radii[2 * g]) / float(ts), ey = float(radii[2 * g + 1]) / float(ts);
        const int32_t x0 = clamp_tile(std::floor(cx - ex), b.tiles_x), x1 = clamp_tile(std::ceil(cx + ex), b.tiles_x);
        int32_t y0 = clamp_tile(std::floor(cy - ey), b.tiles_y), y1 = clamp_tile(std::ceil(cy + ey), b.tiles_y);
        const Ellipse e = reach ? Ellipse(m2d, *reach, g) : Ellipse{};
        const bool cull = reach && !e.degenerate;
        if (cull && e.empty) continue;
        double half_height = 0.0;
        if (cull) {  // rows of tiles whose pixel centres the ellipse can reach
          half_height = e.half_height();
          y0 = std::max(y0, clamp_tile(std::ceil((e.my - half_height + 0.5) / tsd - 1.0), b.tiles_y));
          y1 = std::min(y1, clamp_tile(std::floor((e.my + half_height - 0.5) / tsd) + 1.0, b.tiles_y));
        }
        for (int32_t ty = y0; ty < y1; ++ty) {
          int32_t lo = x0, hi = x1;
          if (cull) {
            const double dy0 = std::max(double(ty) * tsd + 0.5 - e.my, -half_height);
            const double dy1 = std::min(double(ty + 1) * tsd - 0.5 - e.my, half_height);
            if (dy0 > dy1) continue;
            double span_lo, span_hi;
            e.span(dy0, dy1, span_lo, span_hi);
            // tile tx has centres tx ts + 0.5 .. (tx + 1) ts - 0.5
            lo = std::max(lo, clamp_tile(std::ceil((e.mx + span_lo + 0.5) / tsd - 1.0), b.tiles_x));
            hi = std::min(hi, clamp_tile(std::floor((e.mx + span_hi - 0.5) / tsd) + 1.0, b.tiles_x));
          }
          for (int32_t tx = lo; tx < hi; ++tx) {
            const int32_t tile = ty * static_cast<int32_t>(b.tiles_x) + tx;
            ++part.count[tile];
            part.hits.push_back(tile);
          }
        }
      }
      part.first[r_hi - r_lo] = static_cast<int64_t>(part.hits.size());
    }
  });
  // Offsets; each chunk writes its entries of a tile after the earlier chunks' (depth order kept).
  b.offsets.assign(n_tiles + 1, 0);
  for (int64_t t = 0; t < n_tiles; ++t) {
    int64_t total = 0;
    for (const Chunk& part : parts) total += part.count[t];
    b.offsets[t + 1] = b.offsets[t] + total;
  }
  for (int64_t t = 0; t < n_tiles; ++t) {
    int64_t cursor = b.offsets[t];
    for (Chunk& part : parts) {
      const int64_t here = part.count[t];
      part.count[t] = cursor;  // now: where this chunk's next entry of tile t goes
      cursor += here;
    }
  }
  b.ids.resize(b.offsets[n_tiles]);
  at::parallel_for(0, chunks, 1, [&](int64_t c_lo, int64_t c_hi) {
    for (int64_t ci = c_lo; ci < c_hi; ++ci) {
      const auto [r_lo, r_hi] = chunk_range(ci);
      Chunk& part = parts[ci];
      for (int64_t r = r_lo; r < r_hi; ++r) {
        const int64_t id = use_rank ? r : order[r];
        for (int64_t i = part.first[r - r_lo]; i < part.first[r - r_lo + 1]; ++i)
          b.ids[part.count[part.hits[i]]++] = id;
      }
    }
  });
  return b;
}

void check_projection_inputs(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                             const at::Tensor& viewmats, const at::Tensor& Ks) {
  const int64_t n = means.size(0), c = viewmats.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && quats.sizes() == at::IntArrayRef({n, 4}) &&
              scales.sizes() == at::IntArrayRef({n, 3}) && viewmats.sizes() == at::IntArrayRef({c, 4, 4}) &&
              Ks.sizes() == at::IntArrayRef({c, 3, 3}),
              "project: means [N,3], quats [N,4], scales [N,3], viewmats [C,4,4], Ks [C,3,3] expected");
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "project: float32 or float64 expected");
  for (const at::Tensor* t : {&means, &quats, &scales, &viewmats, &Ks})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dtype,
                "project: contiguous CPU tensors of one dtype expected");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& viewmats,
    const at::Tensor& Ks, int64_t width, int64_t height, double eps2d, double near_plane, double far_plane,
    double radius_clip) {
  check_projection_inputs(means, quats, scales, viewmats, Ks);
  const int64_t n = means.size(0), n_cams = viewmats.size(0);
  const auto opts = means.options();
  at::Tensor m2d = at::empty({n_cams, n, 2}, opts), conics = at::empty({n_cams, n, 3}, opts);
  at::Tensor depths = at::empty({n_cams, n}, opts), radii = at::empty({n_cams, n, 2}, opts.dtype(at::kInt));
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const std::vector<S> no_cull(n, S(1));
    for (int64_t c = 0; c < n_cams; ++c)
      project<S>(means.data_ptr<S>(), quats.data_ptr<S>(), scales.data_ptr<S>(), viewmats.data_ptr<S>() + 16 * c,
                 Ks.data_ptr<S>() + 9 * c, n, width, height, S(eps2d), S(near_plane), S(far_plane), S(radius_clip),
                 no_cull.data(), S(0), m2d.data_ptr<S>() + c * n * 2, conics.data_ptr<S>() + c * n * 3,
                 depths.data_ptr<S>() + c * n, radii.data_ptr<int32_t>() + c * n * 2);
  };
  if (means.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return {m2d, conics, depths, radii};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> project_backward_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& viewmats,
    const at::Tensor& Ks, int64_t width, int64_t height, double eps2d, const at::Tensor& radii,
    const at::Tensor& v_m2d, const at::Tensor& v_conics, const at::Tensor& v_depths) {
  check_projection_inputs(means, quats, scales, viewmats, Ks);
  const int64_t n = means.size(0), n_cams = viewmats.size(0);
  TORCH_CHECK(radii.sizes() == at::IntArrayRef({n_cams, n, 2}) && radii.scalar_type() == at::kInt &&
              v_m2d.sizes() == at::IntArrayRef({n_cams, n, 2}) && v_conics.sizes() == at::IntArrayRef({n_cams, n, 3}) &&
              v_depths.sizes() == at::IntArrayRef({n_cams, n}),
              "project_backward: radii [C,N,2] i32, v_means2d [C,N,2], v_conics [C,N,3], v_depths [C,N] expected");
  const auto cast = [&](const at::Tensor& t) { return t.to(means.scalar_type()).contiguous(); };
  const at::Tensor vm = cast(v_m2d), vc = cast(v_conics), vd = cast(v_depths), r = radii.contiguous();
  at::Tensor v_means = at::zeros_like(means), v_quats = at::zeros_like(quats), v_scales = at::zeros_like(scales);
  auto run = [&](auto zero) {
    using S = decltype(zero);
    for (int64_t c = 0; c < n_cams; ++c)
      project_backward<S>(means.data_ptr<S>(), quats.data_ptr<S>(), scales.data_ptr<S>(),
                          viewmats.data_ptr<S>() + 16 * c, Ks.data_ptr<S>() + 9 * c, n, width, height, S(eps2d),
                          r.data_ptr<int32_t>() + c * n * 2, vm.data_ptr<S>() + c * n * 2,
                          vc.data_ptr<S>() + c * n * 3, vd.data_ptr<S>() + c * n, v_means.data_ptr<S>(),
                          v_quats.data_ptr<S>(), v_scales.data_ptr<S>());
  };
  if (means.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return {v_means, v_quats, v_scales};
}

std::tuple<at::Tensor, at::Tensor> bin_op(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                                          int64_t width, int64_t height, int64_t ts,
                                          const std::optional<at::Tensor>& conics_in,
                                          const std::optional<at::Tensor>& opacities_in) {
  const int64_t n = means2d.size(0);
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2 && radii.dim() == 2 && radii.size(0) == n &&
              radii.size(1) == 2 && depths.dim() == 1 && depths.size(0) == n,
              "bin: means2d [N, 2], radii [N, 2] and depths [N] expected");
  TORCH_CHECK(radii.scalar_type() == at::kInt, "bin: radii must be int32");
  TORCH_CHECK(ts > 0 && width > 0 && height > 0, "bin: tile size and image size must be positive");
  const at::Tensor m = means2d.contiguous(), r = radii.contiguous(), d = depths.contiguous().to(means2d.scalar_type());
  TORCH_CHECK(m.scalar_type() == at::kFloat || m.scalar_type() == at::kDouble, "bin: float32 or float64 expected");
  const bool cull = conics_in.has_value() && opacities_in.has_value();
  TORCH_CHECK(conics_in.has_value() == opacities_in.has_value(), "bin: give both conics and opacities, or neither");
  at::Tensor conics, opacities;
  if (cull) {
    TORCH_CHECK(conics_in->sizes() == at::IntArrayRef({n, 3}) && opacities_in->sizes() == at::IntArrayRef({n}),
                "bin: conics [N, 3] and opacities [N] expected");
    conics = conics_in->detach().to(m.scalar_type()).contiguous();
    opacities = opacities_in->detach().to(m.scalar_type()).contiguous();
  }
  Bins b;
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const std::vector<int64_t> order = depth_order<S>(r.data_ptr<int32_t>(), d.data_ptr<S>(), n);
    if (cull) {
      const Reach<S> reach{conics.data_ptr<S>(), opacities.data_ptr<S>(), static_cast<double>(static_cast<S>(kAlphaMin))};
      b = bin<S>(order, m.data_ptr<S>(), r.data_ptr<int32_t>(), width, height, ts, false, &reach);
    } else {
      b = bin<S>(order, m.data_ptr<S>(), r.data_ptr<int32_t>(), width, height, ts, false);
    }
  };
  if (m.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  const auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor offsets = at::empty({static_cast<int64_t>(b.offsets.size())}, opts);
  at::Tensor ids = at::empty({static_cast<int64_t>(b.ids.size())}, opts);
  std::memcpy(offsets.data_ptr<int64_t>(), b.offsets.data(), b.offsets.size() * sizeof(int64_t));
  if (!b.ids.empty()) std::memcpy(ids.data_ptr<int64_t>(), b.ids.data(), b.ids.size() * sizeof(int64_t));
  return {offsets, ids};
}

using RenderResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor>;

RenderResult render_forward(const at::Tensor& means_in, const at::Tensor& quats_in, const at::Tensor& scales_in,
                            const at::Tensor& opac_in, const at::Tensor& colors_in, const at::Tensor& viewmats_in,
                            const at::Tensor& Ks_in, const at::Tensor& backgrounds_in, int64_t width, int64_t height,
                            int64_t ts, double eps2d, double near_plane, double far_plane, double radius_clip,
                            double min_opacity) {
  const auto dtype = means_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "render_forward: float32 or float64 expected");
  const int64_t n = means_in.size(0), k = colors_in.size(1), n_cams = viewmats_in.size(0);
  TORCH_CHECK(means_in.dim() == 2 && means_in.size(1) == 3 && quats_in.sizes() == at::IntArrayRef({n, 4}) &&
              scales_in.sizes() == at::IntArrayRef({n, 3}) && opac_in.sizes() == at::IntArrayRef({n}) &&
              colors_in.dim() == 2 && colors_in.size(0) == n,
              "render_forward: means [N,3], quats [N,4], scales [N,3], opacities [N], colors [N,K] expected");
  TORCH_CHECK(viewmats_in.sizes() == at::IntArrayRef({n_cams, 4, 4}) && Ks_in.sizes() == at::IntArrayRef({n_cams, 3, 3}),
              "render_forward: viewmats [C,4,4] and Ks [C,3,3] expected");
  TORCH_CHECK(backgrounds_in.numel() == 0 || backgrounds_in.sizes() == at::IntArrayRef({n_cams, k}),
              "render_forward: backgrounds must be [C, K] or empty");
  TORCH_CHECK(ts > 0 && width > 0 && height > 0, "render_forward: tile size and image size must be positive");
  for (const at::Tensor* t : {&means_in, &quats_in, &scales_in, &opac_in, &colors_in, &viewmats_in, &Ks_in})
    TORCH_CHECK(t->device().is_cpu(), "render_forward: CPU tensors expected");
  const auto cast = [&](const at::Tensor& t) { return t.to(dtype).contiguous(); };
  const at::Tensor means = cast(means_in), quats = cast(quats_in), scales = cast(scales_in), opac = cast(opac_in),
                   colors = cast(colors_in), viewmats = cast(viewmats_in), Ks = cast(Ks_in);
  const bool has_bg = backgrounds_in.numel() > 0;
  const at::Tensor backgrounds = has_bg ? cast(backgrounds_in) : backgrounds_in;
  const auto opts = means.options();
  at::Tensor rgb = at::empty({n_cams, height, width, k}, opts);
  at::Tensor alpha = at::empty({n_cams, height, width, 1}, opts);
  at::Tensor depth = at::empty({n_cams, height, width, 1}, opts);
  at::Tensor m2d = at::empty({n_cams, n, 2}, opts), conics = at::empty({n_cams, n, 3}, opts);
  at::Tensor depths = at::empty({n_cams, n}, opts);
  at::Tensor radii = at::empty({n_cams, n, 2}, opts.dtype(at::kInt));
  at::Tensor stage_ms = at::zeros({3}, opts.dtype(at::kDouble));
  double* times = stage_ms.data_ptr<double>();
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const int64_t kf = k + 1;  // features: colours, then depth
    for (int64_t c = 0; c < n_cams; ++c) {
      auto t0 = Clock::now();
      S *cm = m2d.data_ptr<S>() + c * n * 2, *cc = conics.data_ptr<S>() + c * n * 3, *cd = depths.data_ptr<S>() + c * n;
      int32_t* cr = radii.data_ptr<int32_t>() + c * n * 2;
      project<S>(means.data_ptr<S>(), quats.data_ptr<S>(), scales.data_ptr<S>(), viewmats.data_ptr<S>() + 16 * c,
                 Ks.data_ptr<S>() + 9 * c, n, width, height, S(eps2d), S(near_plane), S(far_plane), S(radius_clip),
                 opac.data_ptr<S>(), S(min_opacity), cm, cc, cd, cr);
      times[0] += ms_since(t0);
      t0 = Clock::now();
      const std::vector<int64_t> order = depth_order<S>(cr, cd, n);
      const Reach<S> reach{cc, opac.data_ptr<S>(), static_cast<double>(static_cast<S>(kAlphaMin))};
      const Bins b = bin<S>(order, cm, cr, width, height, ts, true, &reach);
      // Visible Gaussians, front to back, packed: the tile lists index these by rank.
      const int64_t nv = static_cast<int64_t>(order.size());
      std::vector<S> pm(2 * nv), pc(3 * nv), po(nv), pf(kf * nv);
      const S* col = colors.data_ptr<S>();
      const S* op = opac.data_ptr<S>();
      for (int64_t r = 0; r < nv; ++r) {
        const int64_t g = order[r];
        pm[2 * r] = cm[2 * g], pm[2 * r + 1] = cm[2 * g + 1];
        pc[3 * r] = cc[3 * g], pc[3 * r + 1] = cc[3 * g + 1], pc[3 * r + 2] = cc[3 * g + 2];
        po[r] = op[g];
        for (int64_t j = 0; j < k; ++j) pf[kf * r + j] = col[k * g + j];
        pf[kf * r + k] = cd[g];
      }
      times[1] += ms_since(t0);
      t0 = Clock::now();
      Scene<S> sc{pm.data(), pc.data(), po.data(), pf.data(), b.offsets.data(), b.ids.data(), nv, kf,
                  static_cast<int64_t>(b.ids.size()), b.tiles_x, b.tiles_y, ts, width, height};
      const std::vector<double> row_bounds = row_reaches(sc);
      sc.reach = row_bounds.data();
      S *out_rgb = rgb.data_ptr<S>() + c * height * width * k, *out_a = alpha.data_ptr<S>() + c * height * width;
      S* out_d = depth.data_ptr<S>() + c * height * width;
      const S* bg = has_bg ? backgrounds.data_ptr<S>() + c * k : nullptr;
      // Pixels of empty tiles show the background.
      for (int64_t pix = 0; pix < height * width; ++pix) {
        for (int64_t j = 0; j < k; ++j) out_rgb[pix * k + j] = bg ? bg[j] : S(0);
        out_a[pix] = S(0), out_d[pix] = S(0);
      }
      for_each_busy_tile(sc, false, [&](int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside) {
        composite_tile(sc, tile, s, inside);
        const int64_t P = ts * ts, x0 = (tile % sc.tiles_x) * ts, y0 = (tile / sc.tiles_x) * ts;
        const S *acc = s.acc.data(), *T = s.trans.data();
        for (int64_t p = 0; p < P; ++p) {
          if (!inside[p]) continue;
          const int64_t pix = (y0 + p / ts) * width + x0 + p % ts;
          const S a = S(1) - T[p];
          for (int64_t j = 0; j < k; ++j) out_rgb[pix * k + j] = acc[j * P + p] + (bg ? (S(1) - a) * bg[j] : S(0));
          out_a[pix] = a;
          out_d[pix] = acc[k * P + p] / std::max(a, S(1e-10));
        }
      });
      times[2] += ms_since(t0);
    }
  };
  if (dtype == at::kFloat) run(0.0f); else run(0.0);
  return {rgb, alpha, depth, m2d, conics, depths, radii, stage_ms};
}


}  // namespace

TORCH_LIBRARY_FRAGMENT(vasa3d_composite, m) {
  m.def("project(Tensor means, Tensor quats, Tensor scales, Tensor viewmats, Tensor Ks, int width, int height, "
        "float eps2d, float near_plane, float far_plane, float radius_clip) -> (Tensor, Tensor, Tensor, Tensor)",
        &project_op);
  m.def("project_backward(Tensor means, Tensor quats, Tensor scales, Tensor viewmats, Tensor Ks, int width, "
        "int height, float eps2d, Tensor radii, Tensor v_means2d, Tensor v_conics, Tensor v_depths) "
        "-> (Tensor, Tensor, Tensor)",
        &project_backward_op);
  m.def("bin(Tensor means2d, Tensor radii, Tensor depths, int width, int height, int tile_size, "
        "Tensor? conics=None, Tensor? opacities=None) -> (Tensor, Tensor)",
        &bin_op);
  m.def("render_forward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors, "
        "Tensor viewmats, Tensor Ks, Tensor backgrounds, int width, int height, int tile_size, float eps2d, "
        "float near_plane, float far_plane, float radius_clip, float min_opacity) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        &render_forward);
}
