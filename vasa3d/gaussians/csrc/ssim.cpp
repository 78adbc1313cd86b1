// Per-pixel SSIM with a separable Gaussian window, and its backward to the first image: the D-SSIM
// term of every fitting step. Same rules as vasa3d.losses.rendering.ssim_map (the torch reference):
// valid windows only (no padding), data range 1, K1 0.01, K2 0.03, the five moments x, y, x^2, y^2, xy
// blurred by the window along rows, then along columns.
//
// The reference runs ten depthwise convolutions (five maps, two passes) and their backwards through
// autograd, ~60 ms a step for 4 frames at 256 px here; this is one pass per image plane for each
// direction. Planes are independent and each is computed in a fixed order, so the result does not
// depend on the thread count. The backward recomputes the blurred moments instead of storing them.
//
// Ops (registered as torch.ops.vasa3d_composite.*):
//   ssim_forward(x [P,H,W], y [P,H,W], window [K]) -> ssim [P, H-K+1, W-K+1]
//   ssim_backward(x, y, window, v_ssim [P, H-K+1, W-K+1]) -> v_x [P,H,W]   (y is a constant)

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

constexpr double kC1 = 0.01 * 0.01, kC2 = 0.03 * 0.03;

void check(const char* op, const at::Tensor& x, const at::Tensor& y, const at::Tensor& window) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": float32 or float64 expected");
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && window.scalar_type() == x.scalar_type(),
              op, ": the images and the window must share a dtype");
  for (const at::Tensor* t : {&x, &y, &window})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), op, ": contiguous CPU tensors expected");
  TORCH_CHECK(x.dim() == 3 && y.sizes() == x.sizes(), op, ": x and y must be [P, H, W] of the same size");
  TORCH_CHECK(window.dim() == 1 && window.numel() >= 1, op, ": the window must be a non-empty vector");
  TORCH_CHECK(x.size(1) >= window.numel() && x.size(2) >= window.numel(), op, ": images smaller than the window");
}

// The five moments of one plane blurred along its rows: rows[m][r][j] = sum_t g[t] moment_m[r][j + t],
// moments x, y, x^2, y^2, xy; rows is [5][h][wo].
template <typename S>
void blur_rows(const S* x, const S* y, const S* g, int64_t h, int64_t w, int64_t k, S* rows) {
  const int64_t wo = w - k + 1, stride = h * wo;
  std::fill(rows, rows + 5 * stride, S(0));
  for (int64_t r = 0; r < h; ++r) {
    const S *xr = x + r * w, *yr = y + r * w;
    S *m0 = rows + r * wo, *m1 = m0 + stride, *m2 = m1 + stride, *m3 = m2 + stride, *m4 = m3 + stride;
    for (int64_t t = 0; t < k; ++t) {
      const S gt = g[t];
#pragma omp simd
      for (int64_t j = 0; j < wo; ++j) {
        const S a = xr[j + t], b = yr[j + t];
        m0[j] += gt * a;
        m1[j] += gt * b;
        m2[j] += gt * (a * a);
        m3[j] += gt * (b * b);
        m4[j] += gt * (a * b);
      }
    }
  }
}

// Output row i of the five blurred moments (the column pass over rows i..i+k-1): mom[m][j], [5][wo].
template <typename S>
void blur_column(const S* rows, const S* g, int64_t h, int64_t wo, int64_t k, int64_t i, S* mom) {
  const int64_t stride = h * wo;
  std::fill(mom, mom + 5 * wo, S(0));
  for (int64_t t = 0; t < k; ++t) {
    const S gt = g[t];
    for (int64_t m = 0; m < 5; ++m) {
      const S* src = rows + m * stride + (i + t) * wo;
      S* dst = mom + m * wo;
#pragma omp simd
      for (int64_t j = 0; j < wo; ++j) dst[j] += gt * src[j];
    }
  }
}

// The four factors of SSIM at one pixel from its blurred moments: ssim = (a1 a2) / (b1 b2), with a1 = 2 mx my + c1,
// a2 = 2 cov + c2, b1 = mx^2 + my^2 + c1, b2 = var_x + var_y + c2 (the reference's order of operations).
template <typename S>
struct Terms {
  S a1, a2, b1, b2;
};

template <typename S>
inline Terms<S> ssim_terms(S mx, S my, S xx, S yy, S xy, S c1, S c2) {
  return {S(2) * mx * my + c1, S(2) * (xy - mx * my) + c2, mx * mx + my * my + c1,
          (xx - mx * mx) + (yy - my * my) + c2};
}

at::Tensor ssim_forward(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& window_in) {
  check("ssim_forward", x_in, y_in, window_in);
  const int64_t planes = x_in.size(0), h = x_in.size(1), w = x_in.size(2), k = window_in.numel();
  const int64_t ho = h - k + 1, wo = w - k + 1;
  at::Tensor out = at::empty({planes, ho, wo}, x_in.options());
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const S *x = x_in.data_ptr<S>(), *y = y_in.data_ptr<S>(), *g = window_in.data_ptr<S>();
    S* o = out.data_ptr<S>();
    const S c1 = S(kC1), c2 = S(kC2);
    at::parallel_for(0, planes, 1, [&](int64_t lo, int64_t hi) {
      std::vector<S> rows(5 * h * wo), mom(5 * wo);
      for (int64_t p = lo; p < hi; ++p) {
        blur_rows(x + p * h * w, y + p * h * w, g, h, w, k, rows.data());
        for (int64_t i = 0; i < ho; ++i) {
          blur_column(rows.data(), g, h, wo, k, i, mom.data());
          const S *mx = mom.data(), *my = mx + wo, *xx = my + wo, *yy = xx + wo, *xy = yy + wo;
          S* orow = o + (p * ho + i) * wo;
#pragma omp simd
          for (int64_t j = 0; j < wo; ++j) {
            const Terms<S> f = ssim_terms(mx[j], my[j], xx[j], yy[j], xy[j], c1, c2);
            orow[j] = (f.a1 * f.a2) / (f.b1 * f.b2);
          }
        }
      }
    });
  };
  if (x_in.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return out;
}

at::Tensor ssim_backward(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& window_in,
                         const at::Tensor& v_in) {
  check("ssim_backward", x_in, y_in, window_in);
  const int64_t planes = x_in.size(0), h = x_in.size(1), w = x_in.size(2), k = window_in.numel();
  const int64_t ho = h - k + 1, wo = w - k + 1;
  TORCH_CHECK(v_in.scalar_type() == x_in.scalar_type() && v_in.is_contiguous() && v_in.device().is_cpu() &&
              v_in.dim() == 3 && v_in.size(0) == planes && v_in.size(1) == ho && v_in.size(2) == wo,
              "ssim_backward: the gradient must be a contiguous [P, H-K+1, W-K+1] tensor of the images' dtype");
  at::Tensor v_x = at::empty_like(x_in);
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const S *x = x_in.data_ptr<S>(), *y = y_in.data_ptr<S>(), *g = window_in.data_ptr<S>(), *v = v_in.data_ptr<S>();
    S* vx = v_x.data_ptr<S>();
    const S c1 = S(kC1), c2 = S(kC2);
    at::parallel_for(0, planes, 1, [&](int64_t lo, int64_t hi) {
      // d loss / d blurred (mean x, raw x^2, raw xy): first per output pixel [3][ho][wo], then through the
      // column pass's transpose [3][h][wo], then through the row pass's transpose [3][h][w].
      std::vector<S> rows(5 * h * wo), mom(5 * wo), d_out(3 * ho * wo), d_col(3 * h * wo), d_row(3 * h * w);
      for (int64_t p = lo; p < hi; ++p) {
        const S *xp = x + p * h * w, *yp = y + p * h * w;
        blur_rows(xp, yp, g, h, w, k, rows.data());
        S *d_mx = d_out.data(), *d_xx = d_mx + ho * wo, *d_xy = d_xx + ho * wo;
        for (int64_t i = 0; i < ho; ++i) {
          blur_column(rows.data(), g, h, wo, k, i, mom.data());
          const S *mx = mom.data(), *my = mx + wo, *xx = my + wo, *yy = xx + wo, *xy = yy + wo;
          const S* vrow = v + (p * ho + i) * wo;
#pragma omp simd
          for (int64_t j = 0; j < wo; ++j) {
            const Terms<S> f = ssim_terms(mx[j], my[j], xx[j], yy[j], xy[j], c1, c2);
            const S den = f.b1 * f.b2, s = (f.a1 * f.a2) / den, gv = vrow[j];
            // a1, b1 hold mean x; a2, b2 hold mean x and the raw moments xx, xy
            d_mx[i * wo + j] = gv * (S(2) * my[j] * (f.a2 - f.a1) / den - S(2) * mx[j] * s * (S(1) / f.b1 - S(1) / f.b2));
            d_xx[i * wo + j] = gv * (-s / f.b2);
            d_xy[i * wo + j] = gv * (S(2) * f.a1 / den);
          }
        }
        // transpose of the column pass: d_col[m][i + t][j] += g[t] d_out[m][i][j]
        std::fill(d_col.begin(), d_col.end(), S(0));
        for (int64_t m = 0; m < 3; ++m) {
          for (int64_t i = 0; i < ho; ++i) {
            const S* src = d_out.data() + (m * ho + i) * wo;
            for (int64_t t = 0; t < k; ++t) {
              const S gt = g[t];
              S* dst = d_col.data() + (m * h + i + t) * wo;
#pragma omp simd
              for (int64_t j = 0; j < wo; ++j) dst[j] += gt * src[j];
            }
          }
        }
        // transpose of the row pass: d_row[m][r][j + t] += g[t] d_col[m][r][j]
        std::fill(d_row.begin(), d_row.end(), S(0));
        for (int64_t m = 0; m < 3; ++m) {
          for (int64_t r = 0; r < h; ++r) {
            const S* src = d_col.data() + (m * h + r) * wo;
            S* dst = d_row.data() + (m * h + r) * w;
            for (int64_t t = 0; t < k; ++t) {
              const S gt = g[t];
#pragma omp simd
              for (int64_t j = 0; j < wo; ++j) dst[j + t] += gt * src[j];
            }
          }
        }
        // through the moments: d x = d mean + 2 x d(x^2) + y d(xy)
        const S *r_mx = d_row.data(), *r_xx = r_mx + h * w, *r_xy = r_xx + h * w;
        S* out = vx + p * h * w;
#pragma omp simd
        for (int64_t q = 0; q < h * w; ++q) out[q] = r_mx[q] + S(2) * xp[q] * r_xx[q] + yp[q] * r_xy[q];
      }
    });
  };
  if (x_in.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return v_x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vasa3d_composite, m) {
  m.def("ssim_forward(Tensor x, Tensor y, Tensor window) -> Tensor", &ssim_forward);
  m.def("ssim_backward(Tensor x, Tensor y, Tensor window, Tensor v_ssim) -> Tensor", &ssim_backward);
}
