// The inference half of GaussianAvatar.world_gaussians on the CPU: Gaussians bound to a deformed
// mesh (vasa3d.gaussians.binding: triangle frames, bind_to_world), plus the residuals and the
// activations, in one pass over the triangles and one over the Gaussians.
//
// Op (added to torch.ops.vasa3d_composite.*):
//   avatar_forward(vertices [V,3], faces [F,3], binding [N], means [N,3], quats [N,4] (normalised),
//                  log_scales [N,3], opacity_logits [N], color_logits [N,K], residual [N,7+K] or empty)
//     -> world means, quats, scales, opacities, colors, anchors (float32)
//   residual_forward(per_gaussian [N,H], hidden_bias [B,H], weight [O,H], bias [O])
//     -> [B,N,O] = silu(per_gaussian + hidden_bias[b]) @ weight^T + bias (float32): the per-frame half
//        of a one-hidden-layer ResidualDeformer, without its [B,N,H] intermediates

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "projection.h"
#include "tiles.h"

namespace {

using namespace vasa3d;

// rotmat_to_quat of vasa3d.gaussians.projection: the best-conditioned of the four candidate rows.
template <typename S>
void rotmat_to_quat(const S m[3][3], S q[4]) {
  const S tr = m[0][0] + m[1][1] + m[2][2];
  const S c[4][4] = {{1 + tr, m[2][1] - m[1][2], m[0][2] - m[2][0], m[1][0] - m[0][1]},
                     {m[2][1] - m[1][2], 1 + m[0][0] - m[1][1] - m[2][2], m[0][1] + m[1][0], m[0][2] + m[2][0]},
                     {m[0][2] - m[2][0], m[0][1] + m[1][0], 1 - m[0][0] + m[1][1] - m[2][2], m[1][2] + m[2][1]},
                     {m[1][0] - m[0][1], m[0][2] + m[2][0], m[1][2] + m[2][1], 1 - m[0][0] - m[1][1] + m[2][2]}};
  int best = 0;
  S best_norm = S(-1);
  for (int r = 0; r < 4; ++r) {
    const S nr = std::sqrt(c[r][0] * c[r][0] + c[r][1] * c[r][1] + c[r][2] * c[r][2] + c[r][3] * c[r][3]);
    if (nr > best_norm) best_norm = nr, best = r;  // first maximum, as argmax
  }
  const S nq = std::max(best_norm, S(1e-12));
  const S sign = c[best][0] / nq < 0 ? S(-1) : S(1);
  for (int i = 0; i < 4; ++i) q[i] = sign * c[best][i] / nq;
}

template <typename S>
inline void normalize3(S v[3]) {
  const S n = std::max(std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]), S(1e-12));
  v[0] /= n, v[1] /= n, v[2] /= n;
}

// World Gaussians of a mesh-bound head for inference (vasa3d.gaussians.binding.bind_to_world on
// triangle_frames, plus the residuals and activations of GaussianAvatar.world_gaussians).
std::vector<at::Tensor> avatar_forward(const at::Tensor& vertices_in, const at::Tensor& faces_in,
                                       const at::Tensor& binding_in, const at::Tensor& means_in,
                                       const at::Tensor& quats_in, const at::Tensor& log_scales_in,
                                       const at::Tensor& opacity_logits_in, const at::Tensor& color_logits_in,
                                       const at::Tensor& residual_in) {
  TORCH_CHECK(vertices_in.scalar_type() == at::kFloat, "avatar_forward: float32 expected");
  const int64_t n = means_in.size(0), nf = faces_in.size(0), k = color_logits_in.size(1);
  const bool has_res = residual_in.numel() > 0;
  TORCH_CHECK(vertices_in.dim() == 2 && vertices_in.size(1) == 3 && faces_in.dim() == 2 && faces_in.size(1) == 3 &&
              binding_in.sizes() == at::IntArrayRef({n}) && means_in.sizes() == at::IntArrayRef({n, 3}) &&
              quats_in.sizes() == at::IntArrayRef({n, 4}) && log_scales_in.sizes() == at::IntArrayRef({n, 3}) &&
              opacity_logits_in.sizes() == at::IntArrayRef({n}) && color_logits_in.size(0) == n &&
              (!has_res || residual_in.sizes() == at::IntArrayRef({n, 7 + k})),
              "avatar_forward: vertices [V,3], faces [F,3], binding [N], means [N,3], quats [N,4], scales [N,3], "
              "opacities [N], colors [N,K], residual [N,7+K] or empty expected");
  const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const auto i64 = [](const at::Tensor& t) { return t.to(at::kLong).contiguous(); };
  const at::Tensor verts = f32(vertices_in), faces = i64(faces_in), binding = i64(binding_in), means = f32(means_in),
                   quats = f32(quats_in), log_scales = f32(log_scales_in), opac = f32(opacity_logits_in),
                   cols = f32(color_logits_in), res = has_res ? f32(residual_in) : residual_in;
  const int64_t nv = verts.size(0);
  const int64_t* fa = faces.data_ptr<int64_t>();
  for (int64_t i = 0; i < 3 * nf; ++i) TORCH_CHECK(fa[i] >= 0 && fa[i] < nv, "avatar_forward: face index out of range");
  const int64_t* bi = binding.data_ptr<int64_t>();
  for (int64_t g = 0; g < n; ++g) TORCH_CHECK(bi[g] >= 0 && bi[g] < nf, "avatar_forward: binding out of range");
  // per triangle: rotation (columns x, y, normal), centroid, scale, quaternion
  std::vector<float> rot(9 * nf), cen(3 * nf), scl(nf), fq(4 * nf);
  const float* v = verts.data_ptr<float>();
  at::parallel_for(0, nf, kSerialBelow, [&](int64_t lo, int64_t hi) {
    for (int64_t f = lo; f < hi; ++f) {
      const float *v0 = v + 3 * fa[3 * f], *v1 = v + 3 * fa[3 * f + 1], *v2 = v + 3 * fa[3 * f + 2];
      float e0[3], e1[3], e2[3];
      for (int i = 0; i < 3; ++i) e0[i] = v1[i] - v0[i], e1[i] = v2[i] - v1[i], e2[i] = v0[i] - v2[i];
      float nrm[3] = {e0[1] * -e2[2] - e0[2] * -e2[1], e0[2] * -e2[0] - e0[0] * -e2[2], e0[0] * -e2[1] - e0[1] * -e2[0]};
      float ax[3] = {e0[0], e0[1], e0[2]};
      normalize3(nrm), normalize3(ax);
      const float ay[3] = {nrm[1] * ax[2] - nrm[2] * ax[1], nrm[2] * ax[0] - nrm[0] * ax[2], nrm[0] * ax[1] - nrm[1] * ax[0]};
      float m[3][3];
      for (int i = 0; i < 3; ++i) m[i][0] = ax[i], m[i][1] = ay[i], m[i][2] = nrm[i];
      for (int i = 0; i < 9; ++i) rot[9 * f + i] = m[i / 3][i % 3];
      for (int i = 0; i < 3; ++i) cen[3 * f + i] = (v0[i] + v1[i] + v2[i]) / 3.0f;
      const auto len = [](const float* e) { return std::sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2]); };
      scl[f] = (len(e0) + len(e1) + len(e2)) / 3.0f;
      rotmat_to_quat<float>(m, fq.data() + 4 * f);
    }
  });
  const auto opts = verts.options();
  at::Tensor out_means = at::empty({n, 3}, opts), out_quats = at::empty({n, 4}, opts);
  at::Tensor out_scales = at::empty({n, 3}, opts), out_opac = at::empty({n}, opts);
  at::Tensor out_cols = at::empty({n, k}, opts), out_anchors = at::empty({n, 3}, opts);
  const float *mp = means.data_ptr<float>(), *qp = quats.data_ptr<float>(), *sp = log_scales.data_ptr<float>();
  const float *op = opac.data_ptr<float>(), *cp = cols.data_ptr<float>(), *rp = has_res ? res.data_ptr<float>() : nullptr;
  float *om = out_means.data_ptr<float>(), *oq = out_quats.data_ptr<float>(), *os = out_scales.data_ptr<float>();
  float *oo = out_opac.data_ptr<float>(), *oc = out_cols.data_ptr<float>(), *oa = out_anchors.data_ptr<float>();
  const auto sigmoid = [](float x) { return 1.0f / (1.0f + std::exp(-x)); };
  at::parallel_for(0, n, kSerialBelow, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      const int64_t f = bi[g];
      const float* r = rp ? rp + (7 + k) * g : nullptr;  // means 3, log-scales 3, opacity 1, colours K
      const float *R = rot.data() + 9 * f, *c = cen.data() + 3 * f, kf = scl[f];
      float lm[3];
      for (int i = 0; i < 3; ++i) lm[i] = kf * (mp[3 * g + i] + (r ? r[i] : 0.0f));
      for (int i = 0; i < 3; ++i) {
        om[3 * g + i] = R[3 * i] * lm[0] + R[3 * i + 1] * lm[1] + R[3 * i + 2] * lm[2] + c[i];
        oa[3 * g + i] = R[3 * i] * lm[0] + R[3 * i + 1] * lm[1] + c[i];
        os[3 * g + i] = kf * std::exp(sp[3 * g + i] + (r ? r[3 + i] : 0.0f));
      }
      const float *a = fq.data() + 4 * f, *b = qp + 4 * g;
      oq[4 * g] = a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3];
      oq[4 * g + 1] = a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2];
      oq[4 * g + 2] = a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1];
      oq[4 * g + 3] = a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0];
      oo[g] = sigmoid(op[g] + (r ? r[6] : 0.0f));
      for (int64_t j = 0; j < k; ++j) oc[k * g + j] = sigmoid(cp[k * g + j] + (r ? r[7 + j] : 0.0f));
    }
  });
  return {out_means, out_quats, out_scales, out_opac, out_cols, out_anchors};
}

at::Tensor residual_forward(const at::Tensor& per_gaussian_in, const at::Tensor& hidden_bias_in,
                            const at::Tensor& weight_in, const at::Tensor& bias_in) {
  const int64_t n = per_gaussian_in.size(0), h = per_gaussian_in.size(1), b = hidden_bias_in.size(0);
  const int64_t o = weight_in.size(0);
  TORCH_CHECK(per_gaussian_in.dim() == 2 && hidden_bias_in.dim() == 2 && hidden_bias_in.size(1) == h &&
              weight_in.sizes() == at::IntArrayRef({o, h}) && bias_in.sizes() == at::IntArrayRef({o}),
              "residual_forward: per_gaussian [N,H], hidden_bias [B,H], weight [O,H], bias [O] expected");
  for (const at::Tensor* t : {&per_gaussian_in, &hidden_bias_in, &weight_in, &bias_in})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, "residual_forward: float32 CPU tensors expected");
  const at::Tensor pg = per_gaussian_in.contiguous(), hb = hidden_bias_in.contiguous();
  const at::Tensor w = weight_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor out = at::empty({b, n, o}, pg.options());
  const float *pp = pg.data_ptr<float>(), *hp = hb.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  // Blocks of kGroup Gaussians: the SiLU along H (SIMD over hidden units), then the outputs as
  // broadcast multiply-adds with the transposed weight's rows padded to kPad lanes (SIMD over
  // outputs), kGroup independent accumulators so the adds do not wait on each other.
  constexpr int64_t kPad = 16, kGroup = 8;
  TORCH_CHECK(o <= kPad, "residual_forward: at most ", kPad, " outputs");
  constexpr int64_t o_pad = kPad;
  aligned_vector<float> wt(h * o_pad, 0.0f);  // [H][O_pad]
  for (int64_t c = 0; c < o; ++c)
    for (int64_t j = 0; j < h; ++j) wt[j * o_pad + c] = wp[c * h + j];
  const int64_t groups = (n + kGroup - 1) / kGroup;
  at::parallel_for(0, b * groups, 256, [&](int64_t lo, int64_t hi) {
    aligned_vector<float> act(kGroup * h, 0.0f);
    alignas(64) float acc[kGroup * kPad];  // a local array: kept in registers (a heap buffer could alias)
    for (int64_t q = lo; q < hi; ++q) {
      const int64_t bi = q / groups, g0 = (q % groups) * kGroup, len = std::min(kGroup, n - g0);
      const float* hrow = hp + bi * h;
      float *a = act.data(), *s = acc;
      for (int64_t g = 0; g < len; ++g) {
        const float* row = pp + (g0 + g) * h;
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
          const float x = row[j] + hrow[j];
          a[g * h + j] = x / (1.0f + exp_s(-x));  // silu
        }
      }
      for (int64_t g = 0; g < kGroup; ++g)
        for (int64_t c = 0; c < o_pad; ++c) s[g * o_pad + c] = c < o ? bp[c] : 0.0f;
      for (int64_t j = 0; j < h; ++j) {
        const float* wr = wt.data() + j * o_pad;
        for (int64_t g = 0; g < kGroup; ++g) {
          const float aj = a[g * h + j];
          float* sg = s + g * o_pad;
#pragma omp simd
          for (int64_t c = 0; c < o_pad; ++c) sg[c] += aj * wr[c];
        }
      }
      float* dst = out_p + (bi * n + g0) * o;
      for (int64_t g = 0; g < len; ++g) std::copy(s + g * o_pad, s + g * o_pad + o, dst + g * o);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vasa3d_composite, m) {
  m.def("avatar_forward(Tensor vertices, Tensor faces, Tensor binding, Tensor means, Tensor quats, "
        "Tensor log_scales, Tensor opacity_logits, Tensor color_logits, Tensor residual) -> Tensor[]",
        &avatar_forward);
  m.def("residual_forward(Tensor per_gaussian, Tensor hidden_bias, Tensor weight, Tensor bias) -> Tensor",
        &residual_forward);
}
