"""The reference point of the speed benchmarks: a minimal compiled Gaussian rasterizer, plain loops.

What a competent first version looks like, with no tricks: per Gaussian, the projection of
:mod:`vasa3d.gaussians.projection`; a stable sort by depth; per 16-px tile, a list of the
Gaussians whose radius box touches it; per pixel, front-to-back compositing with ``std::exp``
and the compositing rules of :mod:`vasa3d.gaussians.composite` (so its image equals ours);
tiles shared among the threads by ``at::parallel_for``. No SIMD, no row culling, no opacity
cull, no depth channel. ``benchmarks/render_speed.py`` and ``benchmarks/realtime.py`` time our
renderer against it in the same run, on the same scene, and check that the images agree.

Built with ``torch.utils.cpp_extension.load_inline`` on first use (cached by torch).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

std::vector<torch::Tensor> render(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                  torch::Tensor opacities, torch::Tensor colors, torch::Tensor viewmat,
                                  torch::Tensor K, torch::Tensor background, int64_t W, int64_t H) {
  const int64_t n = means.size(0), k = colors.size(1), ts = 16, tx_n = (W + ts - 1) / ts, ty_n = (H + ts - 1) / ts;
  auto m = means.accessor<float, 2>(); auto q = quats.accessor<float, 2>(); auto s = scales.accessor<float, 2>();
  auto op = opacities.accessor<float, 1>(); auto col = colors.accessor<float, 2>();
  auto V = viewmat.accessor<float, 2>(); auto Kc = K.accessor<float, 2>(); auto bg = background.accessor<float, 1>();
  const float fx = Kc[0][0], fy = Kc[1][1], cx = Kc[0][2], cy = Kc[1][2];
  std::vector<float> m2d(2 * n), con(3 * n), depth(n);
  std::vector<int> rx(n), ry(n);
  at::parallel_for(0, n, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      float qn = std::max(std::sqrt(q[g][0]*q[g][0] + q[g][1]*q[g][1] + q[g][2]*q[g][2] + q[g][3]*q[g][3]), 1e-12f);
      float w = q[g][0] / qn, x = q[g][1] / qn, y = q[g][2] / qn, z = q[g][3] / qn;
      float R[3][3] = {{1 - 2*(y*y + z*z), 2*(x*y - w*z), 2*(x*z + w*y)}, {2*(x*y + w*z), 1 - 2*(x*x + z*z), 2*(y*z - w*x)},
                       {2*(x*z - w*y), 2*(y*z + w*x), 1 - 2*(x*x + y*y)}};
      float M[3][3], p[3];  // camera-space rotation times scale, camera-space mean
      for (int i = 0; i < 3; ++i) {
        p[i] = V[i][0] * m[g][0] + V[i][1] * m[g][1] + V[i][2] * m[g][2] + V[i][3];
        for (int j = 0; j < 3; ++j) M[i][j] = (V[i][0] * R[0][j] + V[i][1] * R[1][j] + V[i][2] * R[2][j]) * s[g][j];
      }
      float lx = (W - cx) / fx + 0.15f * W / fx, lnx = cx / fx + 0.15f * W / fx;
      float ly = (H - cy) / fy + 0.15f * H / fy, lny = cy / fy + 0.15f * H / fy;
      float txc = p[2] * std::max(std::min(p[0] / p[2], lx), -lnx), tyc = p[2] * std::max(std::min(p[1] / p[2], ly), -lny);
      float A[3], B[3];
      for (int j = 0; j < 3; ++j) {
        A[j] = fx / p[2] * M[0][j] - fx * txc / (p[2] * p[2]) * M[2][j];
        B[j] = fy / p[2] * M[1][j] - fy * tyc / (p[2] * p[2]) * M[2][j];
      }
      float a = A[0]*A[0] + A[1]*A[1] + A[2]*A[2] + 0.3f, b = A[0]*B[0] + A[1]*B[1] + A[2]*B[2];
      float c = B[0]*B[0] + B[1]*B[1] + B[2]*B[2] + 0.3f, det = std::max(a * c - b * b, 1e-10f);
      m2d[2*g] = fx * p[0] / p[2] + cx, m2d[2*g+1] = fy * p[1] / p[2] + cy;
      con[3*g] = c / det, con[3*g+1] = -b / det, con[3*g+2] = a / det, depth[g] = p[2];
      float r0 = std::ceil(3.33f * std::sqrt(a)), r1 = std::ceil(3.33f * std::sqrt(c));
      bool ok = p[2] > 0.01f && m2d[2*g] + r0 > 0 && m2d[2*g] - r0 < W && m2d[2*g+1] + r1 > 0 && m2d[2*g+1] - r1 < H;
      rx[g] = ok ? int(r0) : 0, ry[g] = ok ? int(r1) : 0;
    }
  });
  std::vector<int64_t> order;
  for (int64_t g = 0; g < n; ++g) if (rx[g] > 0 && ry[g] > 0) order.push_back(g);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return depth[a] < depth[b]; });
  std::vector<std::vector<int64_t>> tiles(tx_n * ty_n);
  for (int64_t g : order) {
    float gx = m2d[2*g] / ts, gy = m2d[2*g+1] / ts, ex = float(rx[g]) / ts, ey = float(ry[g]) / ts;
    int64_t x0 = std::clamp<int64_t>(std::floor(gx - ex), 0, tx_n), x1 = std::clamp<int64_t>(std::ceil(gx + ex), 0, tx_n);
    int64_t y0 = std::clamp<int64_t>(std::floor(gy - ey), 0, ty_n), y1 = std::clamp<int64_t>(std::ceil(gy + ey), 0, ty_n);
    for (int64_t ty = y0; ty < y1; ++ty) for (int64_t tx = x0; tx < x1; ++tx) tiles[ty * tx_n + tx].push_back(g);
  }
  auto rgb = torch::empty({H, W, k}); auto alpha = torch::empty({H, W, 1});
  float* out = rgb.data_ptr<float>(); float* out_a = alpha.data_ptr<float>();
  at::parallel_for(0, tx_n * ty_n, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(k);
    for (int64_t t = lo; t < hi; ++t)
      for (int64_t py = (t / tx_n) * ts; py < std::min((t / tx_n + 1) * ts, H); ++py)
        for (int64_t px = (t % tx_n) * ts; px < std::min((t % tx_n + 1) * ts, W); ++px) {
          float T = 1.0f;
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t g : tiles[t]) {
            float dx = px + 0.5f - m2d[2*g], dy = py + 0.5f - m2d[2*g+1];
            float sigma = 0.5f * (con[3*g] * dx * dx + con[3*g+2] * dy * dy) + con[3*g+1] * dx * dy;
            float a = std::min(0.999f, op[g] * std::exp(-sigma));
            if (sigma < 0 || a < 1.0f / 255.0f) continue;
            float next = T * (1 - a);
            if (next <= 1e-4f) break;
            for (int64_t j = 0; j < k; ++j) acc[j] += a * T * col[g][j];
            T = next;
          }
          for (int64_t j = 0; j < k; ++j) out[(py * W + px) * k + j] = acc[j] + T * bg[j];
          out_a[py * W + px] = 1 - T;
        }
  });
  return {rgb, alpha};
}
"""


@functools.cache
def _module():
    from torch.utils.cpp_extension import load_inline

    return load_inline("vasa3d_minimal_rasterizer", cpp_sources=SOURCE, functions=["render"],
                       extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


def minimal_render(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, K]
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [K]
) -> tuple[Tensor, Tensor]:
    """``rgb [H, W, K]`` over ``background`` and ``alpha [H, W, 1]``, one camera, float32."""
    f32 = [t.detach().float().contiguous() for t in (means, quats, scales, opacities, colors, viewmat, K)]
    bg = torch.zeros(colors.shape[1]) if background is None else background.detach().float().contiguous()
    return tuple(_module().render(*f32, bg, int(width), int(height)))
