// Tile kernels shared by the compositing ops (composite.cpp) and the fused inference
// renderer (render.cpp). Rules and layout are described at the top of composite.cpp.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace vasa3d {


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
  const double* reach = nullptr;  // [N] row_reach of each Gaussian, or null: computed per tile entry
};

// 64-byte aligned storage for the per-worker buffers. The vectorised loops over a tile's
// pixels (with their simd reductions) may peel iterations until the data is aligned, so
// their sums group differently at different buffer addresses. Tiles go to whichever worker
// is free, so with unaligned buffers a result changed in the last bit from run to run with
// two threads (and a resumed fit drifted from an uninterrupted one). Aligned: one grouping.
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const Aligned64<U>&) const { return true; }
};

template <typename T>
using aligned_vector = std::vector<T, Aligned64<T>>;

// Per-worker buffers for one tile: P = tile_size^2 pixels, channel-major [K][P].
template <typename S>
struct Scratch {
  aligned_vector<S> px, py, trans, alive, w, acc, tf, va, vo, buf, ra, va_g, vis;
  aligned_vector<idx_t<S>> last;
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
// row_reach gives that bound on |dy| in pixels: -1 if the Gaussian reaches no pixel, infinity if
// the test does not apply (a degenerate conic: every row).
template <typename S>
double row_reach(S ca, S cb, S cc, S op, S my) {
  const double a = ca, b = cb, c = cc, det = a * c - b * b;
  const double s_max = std::log(static_cast<double>(op) / static_cast<double>(static_cast<S>(kAlphaMin)));
  if (!(a > 0 && det > 0 && std::isfinite(s_max) && std::isfinite(static_cast<double>(my))))
    return std::numeric_limits<double>::infinity();
  if (s_max < -1e-3) return -1.0;  // opacity < 1/255: reaches no pixel
  return std::sqrt(2.0 * std::max(s_max, 0.0) * a / det) * (1.0 + 1e-3) + 1e-2;
}

// row_reach of every Gaussian of the scene, once, for Scene::reach (a log and a square root
// per Gaussian instead of per tile entry).
template <typename S>
std::vector<double> row_reaches(const Scene<S>& sc) {
  std::vector<double> out(sc.n);
  at::parallel_for(0, sc.n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g)
      out[g] = row_reach(sc.conics[3 * g], sc.conics[3 * g + 1], sc.conics[3 * g + 2], sc.opac[g], sc.means[2 * g + 1]);
  });
  return out;
}

template <typename S>
Splat<S> load_splat(const Scene<S>& sc, int64_t g, int64_t y0) {
  Splat<S> sp{sc.means[2 * g], sc.means[2 * g + 1], sc.conics[3 * g], sc.conics[3 * g + 1],
              sc.conics[3 * g + 2], sc.opac[g], 0, sc.ts * sc.ts};
  const double reach = sc.reach ? sc.reach[g] : row_reach(sp.ca, sp.cb, sp.cc, sp.op, sp.my);
  if (std::isinf(reach)) return sp;
  if (reach < 0) {
    sp.p1 = 0;
    return sp;
  }
  const double lo = static_cast<double>(sp.my) - reach - 0.5 - static_cast<double>(y0);  // row centre = y0 + r + 0.5
  const double hi = static_cast<double>(sp.my) + reach - 0.5 - static_cast<double>(y0);
  const double top = static_cast<double>(sc.ts) + 1.0;  // clamp before casting: no overflow
  const int64_t r0 = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(std::clamp(lo, -1.0, top))), 0, sc.ts);
  const int64_t r1 = std::clamp<int64_t>(static_cast<int64_t>(std::floor(std::clamp(hi, -2.0, top))) + 1, r0, sc.ts);
  sp.p0 = r0 * sc.ts, sp.p1 = r1 * sc.ts;
  return sp;
}

// Composites one tile into the scratch buffers: s.acc ([K][P] weighted features), s.trans
// (final transmittance) and s.last (end of the prefix of the tile's list each pixel used).
template <typename S>
void composite_tile(const Scene<S>& sc, int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside) {
  using I = idx_t<S>;
  const int64_t ts = sc.ts, P = ts * ts, K = sc.k;
  const int64_t y0 = (tile / sc.tiles_x) * ts;
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
  // Rows [row_lo, row_hi) hold every pixel still alive: the rows outside have all stopped (or lie
  // off the image), so no Gaussian can change them and the loops skip them.
  int64_t row_lo = 0, row_hi = ts;
  const auto row_alive = [&](int64_t r) {
    S sum = 0;
    for (int64_t p = r * ts; p < (r + 1) * ts; ++p) sum += alive[p];
    return sum > S(0);
  };
  if (n_alive > S(0))
    while (!row_alive(row_hi - 1)) --row_hi;
  for (int64_t j = 0; j < len && n_alive > S(0); ++j) {  // tile-level early stop
    const int64_t g = sc.ids[begin + j];
    const Splat<S> sp = load_splat(sc, g, y0);
    const S mx = sp.mx, my = sp.my, ca = sp.ca, cb = sp.cb, cc = sp.cc, op = sp.op;
    const I jn = static_cast<I>(j + 1);
    const int64_t p0 = std::max(sp.p0, row_lo * ts), p1 = std::min(sp.p1, row_hi * ts);
    S wmax = 0, n_stop = 0;
    // Masks are 0/1 values of S and selects are ternaries: this form vectorises with GCC.
#pragma omp simd reduction(max : wmax) reduction(+ : n_stop)
    for (int64_t p = p0; p < p1; ++p) {
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
        for (int64_t p = p0; p < p1; ++p) a[p] += w[p] * ck;
      }
    }
    if (n_stop > S(0) && n_alive > S(0)) {  // some pixels stopped: shrink the live rows
      while (!row_alive(row_lo)) ++row_lo;
      while (!row_alive(row_hi - 1)) --row_hi;
    }
  }
}

template <typename S>
void forward_tile(const Scene<S>& sc, int64_t tile, Scratch<S>& s, std::vector<uint8_t>& inside,
                  S* out_c, S* out_a, S* out_t, int32_t* out_last) {
  const int64_t ts = sc.ts, P = ts * ts, K = sc.k;
  const int64_t x0 = (tile % sc.tiles_x) * ts, y0 = (tile / sc.tiles_x) * ts;
  composite_tile(sc, tile, s, inside);
  const S *acc = s.acc.data(), *T = s.trans.data();
  const auto* last = s.last.data();
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

// The colour channels [k, k + N) of one Gaussian in the backward, over pixels [lo, hi) of a tile (N <= 4): each
// channel's gradient (sum of w dL/dc) into v_col[N]; into va_g, d(channels) / d alpha, from the colour behind
// (buf, before this Gaussian adds its own) and the transmittance in front; buf gains this Gaussian's colour.
// One pass for the group instead of one per channel (w, ra, T and va_g are loaded and stored once).
template <typename S, int N>
inline void channel_group(const S* __restrict w, const S* __restrict ra, const S* __restrict T, S* __restrict va_g,
                          S* __restrict buf, const S* __restrict vo, const S* col, int64_t P, int64_t lo, int64_t hi,
                          S* v_col) {
  S v0 = 0, v1 = 0, v2 = 0, v3 = 0;
  const S c0 = col[0], c1 = N > 1 ? col[1] : S(0), c2 = N > 2 ? col[2] : S(0), c3 = N > 3 ? col[3] : S(0);
  // (pointers past the group stay at its first channel: never formed beyond the buffers, never read)
  S *b0 = buf, *b1 = buf + (N > 1) * P, *b2 = buf + (N > 2) * 2 * P, *b3 = buf + (N > 3) * 3 * P;
  const S *o0 = vo, *o1 = vo + (N > 1) * P, *o2 = vo + (N > 2) * 2 * P, *o3 = vo + (N > 3) * 3 * P;
#pragma omp simd reduction(+ : v0, v1, v2, v3)
  for (int64_t p = lo; p < hi; ++p) {
    const S wp = w[p], rp = ra[p], tp = T[p];
    S d = 0;
    {
      const S vk = o0[p], bk = b0[p];
      v0 += wp * vk, d += (c0 * tp - bk * rp) * vk, b0[p] = bk + wp * c0;
    }
    if constexpr (N > 1) {
      const S vk = o1[p], bk = b1[p];
      v1 += wp * vk, d += (c1 * tp - bk * rp) * vk, b1[p] = bk + wp * c1;
    }
    if constexpr (N > 2) {
      const S vk = o2[p], bk = b2[p];
      v2 += wp * vk, d += (c2 * tp - bk * rp) * vk, b2[p] = bk + wp * c2;
    }
    if constexpr (N > 3) {
      const S vk = o3[p], bk = b3[p];
      v3 += wp * vk, d += (c3 * tp - bk * rp) * vk, b3[p] = bk + wp * c3;
    }
    va_g[p] += rp > S(0) ? d : S(0);
  }
  v_col[0] = v0;
  if constexpr (N > 1) v_col[1] = v1;
  if constexpr (N > 2) v_col[2] = v2;
  if constexpr (N > 3) v_col[3] = v3;
}

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
    for (int64_t k = 0; k < K; k += 4) {  // channels four at a time: w, ra, T and va_g read once per group
      const int64_t n = std::min<int64_t>(4, K - k);
      auto group = [&](auto count) {
        channel_group<S, decltype(count)::value>(w, ra, T, va_g, buf + k * P, vo + k * P, col + k, P, sp.p0, sp.p1,
                                                 row + kRowFixed + k);
      };
      if (n == 4) group(std::integral_constant<int, 4>{});
      else if (n == 3) group(std::integral_constant<int, 3>{});
      else if (n == 2) group(std::integral_constant<int, 2>{});
      else group(std::integral_constant<int, 1>{});
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

}  // namespace vasa3d
