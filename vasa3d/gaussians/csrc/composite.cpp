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

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

constexpr double kAlphaMax = 0.999;
constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kTMin = 1e-4;

// exp(x) in float32 that the compiler can vectorise (Cephes expf: range reduction by
// ln 2 and a degree-6 polynomial, about 1 ulp). Arguments are clamped to [-87, 88],
// which only matters where the result is masked out anyway (alpha < 1/255 or sigma < 0).
inline float exp_s(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // n = round(x / ln 2) with the 1.5 * 2^23 trick: plain arithmetic, so it vectorises
  // (std::floor or a float-int-float round trip would need -fno-trapping-math).
  constexpr float kMagic = 12582912.0f;
  const float t = x * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kMagic);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  return y * std::bit_cast<float>((ni + 127) << 23);
}
inline double exp_s(double x) { return std::exp(x); }

// Per-pixel index type with the width of the scalar, so masks line up in SIMD lanes.
template <typename S>
using idx_t = std::conditional_t<sizeof(S) == 4, int32_t, int64_t>;

template <typename S>
struct Scene {
  const S* means;      // [N, 2]
  const S* conics;     // [N, 3]
  const S* opac;       // [N]
  const S* colors;     // [N, K]
  const int64_t* offsets;  // [n_tiles + 1]
  const int64_t* ids;  // [M]
  int64_t n, k, m, tiles_x, tiles_y, ts, width, height;
};

// Per-worker buffers for one tile: P = tile_size^2 pixels, channel-major [K][P].
template <typename S>
struct Scratch {
  std::vector<S> px, py, trans, alive, w, acc, tf, va, vo, buf, ra, va_g, vis;
  std::vector<idx_t<S>> last;
  Scratch(int64_t p, int64_t k, bool backward)
      : px(p), py(p), trans(p), alive(p), w(p), acc(backward ? 0 : p * k), last(p) {
    if (backward) {
      tf.resize(p), va.resize(p), vo.resize(p * k), buf.resize(p * k);
      ra.resize(p), va_g.resize(p), vis.resize(p);
    }
  }
};

// Pixel centres of a tile; returns, per pixel, whether it lies inside the image.
template <typename S>
void tile_pixels(const Scene<S>& sc, int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside) {
  const int64_t ts = sc.ts, x0 = (tile % sc.tiles_x) * ts, y0 = (tile / sc.tiles_x) * ts;
  for (int64_t p = 0; p < ts * ts; ++p) {
    const int64_t x = x0 + p % ts, y = y0 + p / ts;
    s.px[p] = S(x) + S(0.5);
    s.py[p] = S(y) + S(0.5);
    inside[p] = x < sc.width && y < sc.height;
  }
}

// One Gaussian's parameters, and the rows of a tile it can reach.
template <typename S>
struct Splat {
  S mx, my, ca, cb, cc, op;
  int64_t p0, p1;  // pixel range [p0, p1) of the tile (whole rows); empty if it reaches none
};

// Rows where the Gaussian can reach alpha >= 1/255: along a row the smallest sigma is
// 0.5 dy^2 det / a, so rows with |dy| > sqrt(2 ln(opacity 255) a / det) are skipped, with a
// margin far above float rounding so the kept pixels are exactly those the full test keeps.
template <typename S>
Splat<S> load_splat(const Scene<S>& sc, int64_t g, int64_t y0) {
  Splat<S> sp{sc.means[2 * g], sc.means[2 * g + 1], sc.conics[3 * g], sc.conics[3 * g + 1],
              sc.conics[3 * g + 2], sc.opac[g], 0, sc.ts * sc.ts};
  const double a = sp.ca, b = sp.cb, c = sp.cc, det = a * c - b * b;
  const double s_max = std::log(static_cast<double>(sp.op) / static_cast<double>(static_cast<S>(kAlphaMin)));
  if (!(a > 0 && det > 0 && std::isfinite(s_max) && std::isfinite(static_cast<double>(sp.my)))) return sp;
  if (s_max < -1e-3) {  // opacity < 1/255: reaches no pixel
    sp.p1 = 0;
    return sp;
  }
  const double reach = std::sqrt(2.0 * std::max(s_max, 0.0) * a / det) * (1.0 + 1e-3) + 1e-2;
  const double lo = static_cast<double>(sp.my) - reach - 0.5 - static_cast<double>(y0);  // row centre = y0 + r + 0.5
  const double hi = static_cast<double>(sp.my) + reach - 0.5 - static_cast<double>(y0);
  const double top = static_cast<double>(sc.ts) + 1.0;  // clamp before casting: no overflow
  const int64_t r0 = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(std::clamp(lo, -1.0, top))), 0, sc.ts);
  const int64_t r1 = std::clamp<int64_t>(static_cast<int64_t>(std::floor(std::clamp(hi, -2.0, top))) + 1, r0, sc.ts);
  sp.p0 = r0 * sc.ts, sp.p1 = r1 * sc.ts;
  return sp;
}

template <typename S>
void forward_tile(const Scene<S>& sc, int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside,
                  S* out_c, S* out_a, S* out_t, int32_t* out_last) {
  using I = idx_t<S>;
  const int64_t ts = sc.ts, P = ts * ts, K = sc.k;
  const int64_t x0 = (tile % sc.tiles_x) * ts, y0 = (tile / sc.tiles_x) * ts;
  tile_pixels(sc, tile, s, inside);
  S *px = s.px.data(), *py = s.py.data(), *T = s.trans.data(), *alive = s.alive.data();
  S *w = s.w.data(), *acc = s.acc.data();
  I* last = s.last.data();
  S n_alive = 0;
  for (int64_t p = 0; p < P; ++p) {
    T[p] = S(1), alive[p] = inside[p] ? S(1) : S(0), last[p] = 0;
    n_alive += alive[p];
  }
  std::fill(acc, acc + K * P, S(0));
  const S amax = S(kAlphaMax), amin = S(kAlphaMin), tmin = S(kTMin);
  const int64_t begin = sc.offsets[tile], len = sc.offsets[tile + 1] - begin;
  for (int64_t j = 0; j < len && n_alive > S(0); ++j) {  // tile-level early stop
    const int64_t g = sc.ids[begin + j];
    const Splat<S> sp = load_splat(sc, g, y0);
    const S mx = sp.mx, my = sp.my, ca = sp.ca, cb = sp.cb, cc = sp.cc, op = sp.op;
    const I jn = static_cast<I>(j + 1);
    S wmax = 0, n_stop = 0;
    // Masks are 0/1 values of S and selects are ternaries: this form vectorises with GCC.
#pragma omp simd reduction(max : wmax) reduction(+ : n_stop)
    for (int64_t p = sp.p0; p < sp.p1; ++p) {
      const S dx = px[p] - mx, dy = py[p] - my;
      const S sigma = S(0.5) * (ca * (dx * dx) + cc * (dy * dy)) + cb * dx * dy;
      const S a0 = op * exp_s(-sigma);
      const S alpha = a0 < amax ? a0 : amax;
      const S t = T[p], nt = t * (S(1) - alpha);
      const S m_use = (sigma >= S(0) && alpha >= amin) ? alive[p] : S(0);
      const S m_stop = nt <= tmin ? m_use : S(0);  // would end the pixel: not added
      const S m_add = m_use - m_stop;
      const S wt = m_add * (alpha * t);
      w[p] = wt;
      T[p] = m_add > S(0) ? nt : t;
      last[p] = m_add > S(0) ? jn : last[p];
      alive[p] -= m_stop;
      n_stop += m_stop;
      wmax = wt > wmax ? wt : wmax;
    }
    n_alive -= n_stop;
    if (wmax > S(0)) {
      const S* col = sc.colors + g * K;
      for (int64_t k = 0; k < K; ++k) {
        const S ck = col[k];
        S* a = acc + k * P;
#pragma omp simd
        for (int64_t p = sp.p0; p < sp.p1; ++p) a[p] += w[p] * ck;
      }
    }
  }
  for (int64_t p = 0; p < P; ++p) {
    if (!inside[p]) continue;
    const int64_t pix = (y0 + p / ts) * sc.width + x0 + p % ts;
    for (int64_t k = 0; k < K; ++k) out_c[pix * K + k] = acc[k * P + p];
    out_a[pix] = S(1) - T[p];
    out_t[pix] = T[p];
    out_last[pix] = static_cast<int32_t>(last[p]);
  }
}

// Gradient row layout per bin entry: mean x, mean y, conic a, b, c, opacity, colour[K].
constexpr int64_t kRowFixed = 6;

template <typename S>
void backward_tile(const Scene<S>& sc, int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside,
                   const S* v_c, const S* v_a, const S* t_final, const int32_t* last_in, S* rows) {
  using I = idx_t<S>;
  const int64_t ts = sc.ts, P = ts * ts, K = sc.k, Q = kRowFixed + K;
  const int64_t x0 = (tile % sc.tiles_x) * ts, y0 = (tile / sc.tiles_x) * ts;
  tile_pixels(sc, tile, s, inside);
  S *px = s.px.data(), *py = s.py.data(), *T = s.trans.data(), *w = s.w.data();
  S *tf = s.tf.data(), *va = s.va.data(), *vo = s.vo.data(), *buf = s.buf.data();
  S *ra = s.ra.data(), *va_g = s.va_g.data(), *vis = s.vis.data();
  I* last = s.last.data();
  I max_last = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t pix = (y0 + p / ts) * sc.width + x0 + p % ts;
    const bool in = inside[p];
    tf[p] = in ? t_final[pix] : S(1);
    va[p] = in ? v_a[pix] : S(0);
    last[p] = in ? static_cast<I>(last_in[pix]) : I(0);
    for (int64_t k = 0; k < K; ++k) vo[k * P + p] = in ? v_c[pix * K + k] : S(0);
    T[p] = tf[p];
    max_last = std::max(max_last, last[p]);
  }
  std::fill(buf, buf + K * P, S(0));
  const int64_t begin = sc.offsets[tile], len = sc.offsets[tile + 1] - begin;
  std::fill(rows + (begin + max_last) * Q, rows + (begin + len) * Q, S(0));
  const S amax = S(kAlphaMax), amin = S(kAlphaMin);
  for (int64_t j = static_cast<int64_t>(max_last) - 1; j >= 0; --j) {  // back to front
    const int64_t g = sc.ids[begin + j];
    const Splat<S> sp = load_splat(sc, g, y0);
    const S mx = sp.mx, my = sp.my, ca = sp.ca, cb = sp.cb, cc = sp.cc, op = sp.op;
    const I jj = static_cast<I>(j);
    S* row = rows + (begin + j) * Q;
    S n_use = 0;
#pragma omp simd reduction(+ : n_use)
    for (int64_t p = sp.p0; p < sp.p1; ++p) {
      const S dx = px[p] - mx, dy = py[p] - my;
      const S sigma = S(0.5) * (ca * (dx * dx) + cc * (dy * dy)) + cb * dx * dy;
      const S e = exp_s(-sigma), a0 = op * e;
      const S alpha = a0 < amax ? a0 : amax;
      const S m = jj < last[p] ? ((sigma >= S(0) && alpha >= amin) ? S(1) : S(0)) : S(0);
      const S r = S(1) / (S(1) - alpha);
      const S t = m > S(0) ? T[p] * r : T[p];  // transmittance in front of this Gaussian
      T[p] = t;
      ra[p] = m * r;
      w[p] = m * (alpha * t);
      va_g[p] = m * (va[p] * tf[p] * r);  // d(1 - T_final) / d alpha
      vis[p] = a0 <= amax ? m * e : S(0);  // 0 where alpha is clamped: no gradient
      n_use += m;
    }
    if (n_use == S(0)) {
      std::fill(row, row + Q, S(0));
      continue;
    }
    const S* col = sc.colors + g * K;
    for (int64_t k = 0; k < K; ++k) {
      const S ck = col[k];
      S* bk = buf + k * P;
      const S* vk = vo + k * P;
      S v_col = 0;
#pragma omp simd reduction(+ : v_col)
      for (int64_t p = sp.p0; p < sp.p1; ++p) {
        v_col += w[p] * vk[p];
        va_g[p] += ra[p] > S(0) ? (ck * T[p] - bk[p] * ra[p]) * vk[p] : S(0);
        bk[p] += w[p] * ck;  // colour behind, for the Gaussians in front
      }
      row[kRowFixed + k] = v_col;
    }
    S vmx = 0, vmy = 0, vca = 0, vcb = 0, vcc = 0, vop = 0;
#pragma omp simd reduction(+ : vmx, vmy, vca, vcb, vcc, vop)
    for (int64_t p = sp.p0; p < sp.p1; ++p) {
      const S dx = px[p] - mx, dy = py[p] - my;
      const S vg = vis[p] * va_g[p];
      const S v_sigma = -op * vg;
      vop += vg;
      vca += S(0.5) * (dx * dx) * v_sigma;
      vcb += dx * dy * v_sigma;
      vcc += S(0.5) * (dy * dy) * v_sigma;
      vmx -= v_sigma * (ca * dx + cb * dy);  // d sigma / d mean = -(conic @ delta)
      vmy -= v_sigma * (cb * dx + cc * dy);
    }
    row[0] = vmx, row[1] = vmy, row[2] = vca, row[3] = vcb, row[4] = vcc, row[5] = vop;
  }
}

// Runs fn(tile, scratch, inside) over the non-empty tiles, longest lists first, with
// dynamic scheduling over at::parallel_for workers.
template <typename S, typename Fn>
void for_each_busy_tile(const Scene<S>& sc, bool backward, Fn&& fn) {
  const int64_t n_tiles = sc.tiles_x * sc.tiles_y;
  std::vector<int64_t> order;
  order.reserve(n_tiles);
  for (int64_t t = 0; t < n_tiles; ++t)
    if (sc.offsets[t + 1] > sc.offsets[t]) order.push_back(t);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return sc.offsets[a + 1] - sc.offsets[a] > sc.offsets[b + 1] - sc.offsets[b];
  });
  const int64_t n_busy = static_cast<int64_t>(order.size());
  if (n_busy == 0) return;
  std::atomic<int64_t> next{0};
  // Small scenes run inline: waking threads would cost more than it saves.
  const bool small = sc.m * sc.ts * sc.ts < (int64_t{1} << 18);
  const int64_t workers = small ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_busy));
  at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
    Scratch<S> s(sc.ts * sc.ts, sc.k, backward);
    std::vector<uint8_t> inside(sc.ts * sc.ts);
    for (int64_t unused = lo; unused < hi; ++unused) {
      for (int64_t i = next.fetch_add(1); i < n_busy; i = next.fetch_add(1)) fn(order[i], s, inside);
    }
  });
}

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
    const Scene<S> sc = make_scene<S>(means2d, conics, opacities, colors, offsets, ids, tiles_x, tiles_y, ts,
                                      width, height);
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
    const Scene<S> sc = make_scene<S>(means2d, conics, opacities, colors, offsets, ids, tiles_x, tiles_y, ts,
                                      width, height);
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
