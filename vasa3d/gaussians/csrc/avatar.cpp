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
//   bind_forward(rotations [F,3,3], frame_scales [F], centroids [F,3], frame_quats [F,4], binding [N],
//                means [N,3], quats [N,4] (normalised), scales [N,3] (activated), anchors)
//     -> world means [N,3], quats [N,4], scales [N,3], anchors [N,3] (or [0] without anchors): the
//        per-Gaussian half of binding.bind_to_world for training (the per-triangle half, F rows, stays
//        in torch), float32 or float64
//   bind_backward(the same inputs, v_means, v_quats, v_scales, v_anchors (each may be empty: zero))
//     -> v_rotations, v_frame_scales, v_centroids, v_frame_quats, v_means, v_quats, v_scales; the
//        per-triangle sums run over each triangle's Gaussians in index order (any thread count: same bits)
//   residual_backward(per_gaussian [N,H], hidden_bias [B,H], weight [O,H], v_out [B,N,O])
//     -> v_per_gaussian [N,H], v_hidden_bias [B,H], v_weight [O,H], v_bias [O] (float32): the backward of
//        residual_forward for training; sums over Gaussians run in fixed blocks, added in block order
//   frames_forward(vertices [V,3], faces [F,3]) -> rotations [F,3,3], scales [F], centroids [F,3],
//     quats [F,4]: binding.triangle_frames and each frame's rotmat_to_quat, float32 or float64
//   frames_backward(vertices, faces, v_rotations, v_scales, v_centroids, v_quats (each may be empty))
//     -> v_vertices [V,3], the faces' corners added in face order (same bits for any thread count)

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "projection.h"
#include "tiles.h"

namespace {

using namespace vasa3d;

// One triangle's frame (vasa3d.gaussians.binding.triangle_frames) and its quaternion (rotmat_to_quat of
// vasa3d.gaussians.projection: the best-conditioned of the four candidate rows), shared by the
// inference pass (avatar_forward) and the training ops (frames_forward/backward).
template <typename S>
inline S dot3(const S* a, const S* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

template <typename S>
inline void cross3(const S* a, const S* b, S* out) {
  out[0] = a[1] * b[2] - a[2] * b[1], out[1] = a[2] * b[0] - a[0] * b[2], out[2] = a[0] * b[1] - a[1] * b[0];
}

// The candidate rows of rotmat_to_quat: row r of 4 q_r q (see vasa3d.gaussians.projection), linear in m.
template <typename S>
void quat_candidates(const S m[3][3], S c[4][4]) {
  const S tr = m[0][0] + m[1][1] + m[2][2];
  const S rows[4][4] = {{1 + tr, m[2][1] - m[1][2], m[0][2] - m[2][0], m[1][0] - m[0][1]},
                        {m[2][1] - m[1][2], 1 + m[0][0] - m[1][1] - m[2][2], m[0][1] + m[1][0], m[0][2] + m[2][0]},
                        {m[0][2] - m[2][0], m[0][1] + m[1][0], 1 - m[0][0] + m[1][1] - m[2][2], m[1][2] + m[2][1]},
                        {m[1][0] - m[0][1], m[0][2] + m[2][0], m[1][2] + m[2][1], 1 - m[0][0] - m[1][1] + m[2][2]}};
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 4; ++i) c[r][i] = rows[r][i];
}

// One triangle's frame: edges, normal, in-plane axes, rotation (columns x, y, normal), scale, centroid.
template <typename S>
struct Frame {
  S e0[3], e1[3], e2[3], d[3], nraw[3], n[3], ax[3], ay[3], m[3][3];
  S len0, len1, len2, nraw_len, k, c[3];
  S cand[4][4], cand_norm, sign;
  int best;

  Frame(const S* v0, const S* v1, const S* v2) {
    for (int i = 0; i < 3; ++i) e0[i] = v1[i] - v0[i], e1[i] = v2[i] - v1[i], e2[i] = v0[i] - v2[i], d[i] = -e2[i];
    cross3(e0, d, nraw);
    nraw_len = std::sqrt(dot3(nraw, nraw)), len0 = std::sqrt(dot3(e0, e0));
    len1 = std::sqrt(dot3(e1, e1)), len2 = std::sqrt(dot3(e2, e2));
    const S nd = std::max(nraw_len, S(1e-12)), ad = std::max(len0, S(1e-12));
    for (int i = 0; i < 3; ++i) n[i] = nraw[i] / nd, ax[i] = e0[i] / ad;
    cross3(n, ax, ay);
    for (int i = 0; i < 3; ++i) m[i][0] = ax[i], m[i][1] = ay[i], m[i][2] = n[i];
    k = (len0 + len1 + len2) / S(3);
    for (int i = 0; i < 3; ++i) c[i] = (v0[i] + v1[i] + v2[i]) / S(3);
    quat_candidates(m, cand);
    best = 0;
    S best_norm = S(-1);
    for (int r = 0; r < 4; ++r) {
      const S nr = std::sqrt(cand[r][0] * cand[r][0] + cand[r][1] * cand[r][1] + cand[r][2] * cand[r][2] +
                             cand[r][3] * cand[r][3]);
      if (nr > best_norm) best_norm = nr, best = r;  // the first maximum, as argmax
    }
    cand_norm = best_norm;
    sign = cand[best][0] / std::max(cand_norm, S(1e-12)) < 0 ? S(-1) : S(1);
  }
  void quat(S* q) const {
    const S nq = std::max(cand_norm, S(1e-12));
    for (int i = 0; i < 4; ++i) q[i] = sign * cand[best][i] / nq;
  }
};

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
      const Frame<float> fr(v + 3 * fa[3 * f], v + 3 * fa[3 * f + 1], v + 3 * fa[3 * f + 2]);
      for (int i = 0; i < 9; ++i) rot[9 * f + i] = fr.m[i / 3][i % 3];
      for (int i = 0; i < 3; ++i) cen[3 * f + i] = fr.c[i];
      scl[f] = fr.k;
      fr.quat(fq.data() + 4 * f);
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


// ---------------------------------------------------------------------------------------------------
// Training: the per-Gaussian half of bind_to_world, forward and backward.

struct BindInputs {
  at::Tensor rot, k, cen, fq, binding, means, quats, scales;
  int64_t n, nf;
};

BindInputs check_bind_inputs(const char* op, const at::Tensor& rotations, const at::Tensor& frame_scales,
                             const at::Tensor& centroids, const at::Tensor& frame_quats, const at::Tensor& binding,
                             const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales) {
  const int64_t nf = rotations.size(0), n = means.size(0);
  TORCH_CHECK(rotations.dim() == 3 && rotations.size(1) == 3 && rotations.size(2) == 3 &&
              frame_scales.sizes() == at::IntArrayRef({nf}) && centroids.sizes() == at::IntArrayRef({nf, 3}) &&
              frame_quats.sizes() == at::IntArrayRef({nf, 4}) && binding.sizes() == at::IntArrayRef({n}) &&
              means.sizes() == at::IntArrayRef({n, 3}) && quats.sizes() == at::IntArrayRef({n, 4}) &&
              scales.sizes() == at::IntArrayRef({n, 3}),
              op, ": rotations [F,3,3], frame_scales [F], centroids [F,3], frame_quats [F,4], binding [N], "
              "means [N,3], quats [N,4], scales [N,3] expected");
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": float32 or float64 expected");
  for (const at::Tensor* t : {&rotations, &frame_scales, &centroids, &frame_quats, &binding, &means, &quats, &scales})
    TORCH_CHECK(t->device().is_cpu(), op, ": CPU tensors expected");
  const auto cast = [&](const at::Tensor& t) { return t.to(dtype).contiguous(); };
  BindInputs in{cast(rotations), cast(frame_scales), cast(centroids), cast(frame_quats), binding.to(at::kLong).contiguous(),
                cast(means), cast(quats), cast(scales), n, nf};
  const int64_t* bi = in.binding.data_ptr<int64_t>();
  for (int64_t g = 0; g < n; ++g) TORCH_CHECK(bi[g] >= 0 && bi[g] < nf, op, ": binding out of range");
  return in;
}

std::vector<at::Tensor> bind_forward(const at::Tensor& rotations, const at::Tensor& frame_scales,
                                     const at::Tensor& centroids, const at::Tensor& frame_quats,
                                     const at::Tensor& binding, const at::Tensor& means, const at::Tensor& quats,
                                     const at::Tensor& scales, bool anchors) {
  const BindInputs in = check_bind_inputs("bind_forward", rotations, frame_scales, centroids, frame_quats, binding,
                                          means, quats, scales);
  const int64_t n = in.n;
  const auto opts = in.means.options();
  at::Tensor out_m = at::empty({n, 3}, opts), out_q = at::empty({n, 4}, opts), out_s = at::empty({n, 3}, opts);
  at::Tensor out_a = at::empty({anchors ? n : 0, anchors ? 3 : 0}, opts);
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const S *R0 = in.rot.data_ptr<S>(), *kp = in.k.data_ptr<S>(), *cp = in.cen.data_ptr<S>(), *fq = in.fq.data_ptr<S>();
    const S *mp = in.means.data_ptr<S>(), *qp = in.quats.data_ptr<S>(), *sp = in.scales.data_ptr<S>();
    const int64_t* bi = in.binding.data_ptr<int64_t>();
    S *om = out_m.data_ptr<S>(), *oq = out_q.data_ptr<S>(), *os = out_s.data_ptr<S>();
    S* oa = anchors ? out_a.data_ptr<S>() : nullptr;
    at::parallel_for(0, n, kSerialBelow, [&](int64_t lo, int64_t hi) {
      for (int64_t g = lo; g < hi; ++g) {
        const int64_t f = bi[g];
        const S *R = R0 + 9 * f, *c = cp + 3 * f, kf = kp[f];
        const S lm[3] = {kf * mp[3 * g], kf * mp[3 * g + 1], kf * mp[3 * g + 2]};
        for (int i = 0; i < 3; ++i) {
          om[3 * g + i] = R[3 * i] * lm[0] + R[3 * i + 1] * lm[1] + R[3 * i + 2] * lm[2] + c[i];
          if (oa) oa[3 * g + i] = R[3 * i] * lm[0] + R[3 * i + 1] * lm[1] + c[i];
          os[3 * g + i] = kf * sp[3 * g + i];
        }
        const S *a = fq + 4 * f, *b = qp + 4 * g;
        oq[4 * g] = a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3];
        oq[4 * g + 1] = a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2];
        oq[4 * g + 2] = a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1];
        oq[4 * g + 3] = a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0];
      }
    });
  };
  if (in.means.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return {out_m, out_q, out_s, out_a};
}

std::vector<at::Tensor> bind_backward(const at::Tensor& rotations, const at::Tensor& frame_scales,
                                      const at::Tensor& centroids, const at::Tensor& frame_quats,
                                      const at::Tensor& binding, const at::Tensor& means, const at::Tensor& quats,
                                      const at::Tensor& scales, const at::Tensor& v_means_in,
                                      const at::Tensor& v_quats_in, const at::Tensor& v_scales_in,
                                      const at::Tensor& v_anchors_in) {
  const BindInputs in = check_bind_inputs("bind_backward", rotations, frame_scales, centroids, frame_quats, binding,
                                          means, quats, scales);
  const int64_t n = in.n, nf = in.nf;
  const auto dtype = in.means.scalar_type();
  const auto grad = [&](const at::Tensor& t, int64_t width, const char* name) {
    if (t.numel() == 0) return t;
    TORCH_CHECK(t.sizes() == at::IntArrayRef({n, width}), "bind_backward: ", name, " must be [N, ", width, "] or empty");
    return t.to(dtype).contiguous();
  };
  const at::Tensor vm = grad(v_means_in, 3, "v_means"), vq = grad(v_quats_in, 4, "v_quats"),
                   vs = grad(v_scales_in, 3, "v_scales"), va = grad(v_anchors_in, 3, "v_anchors");
  const auto opts = in.means.options();
  at::Tensor g_rot = at::zeros({nf, 3, 3}, opts), g_k = at::zeros({nf}, opts), g_cen = at::zeros({nf, 3}, opts);
  at::Tensor g_fq = at::zeros({nf, 4}, opts);
  at::Tensor g_m = at::empty({n, 3}, opts), g_q = at::empty({n, 4}, opts), g_s = at::empty({n, 3}, opts);
  // Each triangle's Gaussians in index order (a stable counting sort), for per-triangle sums in a fixed order.
  const int64_t* bi = in.binding.data_ptr<int64_t>();
  std::vector<int64_t> start(nf + 1, 0), members(n);
  for (int64_t g = 0; g < n; ++g) ++start[bi[g] + 1];
  for (int64_t f = 0; f < nf; ++f) start[f + 1] += start[f];
  {
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    for (int64_t g = 0; g < n; ++g) members[cursor[bi[g]]++] = g;
  }
  constexpr int kRow = 17;  // per Gaussian: rotation 9, scale 1, centroid 3, quaternion 4
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const S *R0 = in.rot.data_ptr<S>(), *kp = in.k.data_ptr<S>(), *fq = in.fq.data_ptr<S>();
    const S *mp = in.means.data_ptr<S>(), *qp = in.quats.data_ptr<S>(), *sp = in.scales.data_ptr<S>();
    const S *gw = vm.numel() ? vm.data_ptr<S>() : nullptr, *gq = vq.numel() ? vq.data_ptr<S>() : nullptr;
    const S *gs = vs.numel() ? vs.data_ptr<S>() : nullptr, *ga = va.numel() ? va.data_ptr<S>() : nullptr;
    S *om = g_m.data_ptr<S>(), *oq = g_q.data_ptr<S>(), *os = g_s.data_ptr<S>();
    std::vector<S> rows(kRow * n);
    at::parallel_for(0, n, kSerialBelow, [&](int64_t lo, int64_t hi) {
      for (int64_t g = lo; g < hi; ++g) {
        const int64_t f = bi[g];
        const S *R = R0 + 9 * f, kf = kp[f];
        const S m[3] = {mp[3 * g], mp[3 * g + 1], mp[3 * g + 2]};
        const S w[3] = {gw ? gw[3 * g] : S(0), gw ? gw[3 * g + 1] : S(0), gw ? gw[3 * g + 2] : S(0)};
        const S an[3] = {ga ? ga[3 * g] : S(0), ga ? ga[3 * g + 1] : S(0), ga ? ga[3 * g + 2] : S(0)};
        S* row = rows.data() + kRow * g;
        S rt_w[3], rt_a[3];  // R^T v
        for (int j = 0; j < 3; ++j) {
          rt_w[j] = R[j] * w[0] + R[3 + j] * w[1] + R[6 + j] * w[2];
          rt_a[j] = R[j] * an[0] + R[3 + j] * an[1] + R[6 + j] * an[2];
        }
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) row[3 * i + j] = w[i] * (kf * m[j]) + (j < 2 ? an[i] * (kf * m[j]) : S(0));
        S v_k = m[0] * (rt_w[0] + rt_a[0]) + m[1] * (rt_w[1] + rt_a[1]) + m[2] * rt_w[2];
        for (int j = 0; j < 3; ++j) {
          om[3 * g + j] = kf * rt_w[j] + (j < 2 ? kf * rt_a[j] : S(0));
          const S vsj = gs ? gs[3 * g + j] : S(0);
          v_k += vsj * sp[3 * g + j];
          os[3 * g + j] = vsj * kf;
          row[10 + j] = w[j] + an[j];
        }
        row[9] = v_k;
        const S *a = fq + 4 * f, *b = qp + 4 * g;
        const S p[4] = {gq ? gq[4 * g] : S(0), gq ? gq[4 * g + 1] : S(0), gq ? gq[4 * g + 2] : S(0),
                        gq ? gq[4 * g + 3] : S(0)};
        row[13] = p[0] * b[0] + p[1] * b[1] + p[2] * b[2] + p[3] * b[3];  // d(a b) / d a
        row[14] = -p[0] * b[1] + p[1] * b[0] - p[2] * b[3] + p[3] * b[2];
        row[15] = -p[0] * b[2] + p[1] * b[3] + p[2] * b[0] - p[3] * b[1];
        row[16] = -p[0] * b[3] - p[1] * b[2] + p[2] * b[1] + p[3] * b[0];
        oq[4 * g] = p[0] * a[0] + p[1] * a[1] + p[2] * a[2] + p[3] * a[3];  // d(a b) / d b
        oq[4 * g + 1] = -p[0] * a[1] + p[1] * a[0] + p[2] * a[3] - p[3] * a[2];
        oq[4 * g + 2] = -p[0] * a[2] - p[1] * a[3] + p[2] * a[0] + p[3] * a[1];
        oq[4 * g + 3] = -p[0] * a[3] + p[1] * a[2] - p[2] * a[1] + p[3] * a[0];
      }
    });
    S *vr = g_rot.data_ptr<S>(), *vk = g_k.data_ptr<S>(), *vc = g_cen.data_ptr<S>(), *vf = g_fq.data_ptr<S>();
    at::parallel_for(0, nf, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t f = lo; f < hi; ++f) {
        S acc[kRow] = {};
        for (int64_t i = start[f]; i < start[f + 1]; ++i) {
          const S* row = rows.data() + kRow * members[i];
          for (int j = 0; j < kRow; ++j) acc[j] += row[j];
        }
        for (int j = 0; j < 9; ++j) vr[9 * f + j] = acc[j];
        vk[f] = acc[9];
        for (int j = 0; j < 3; ++j) vc[3 * f + j] = acc[10 + j];
        for (int j = 0; j < 4; ++j) vf[4 * f + j] = acc[13 + j];
      }
    });
  };
  if (dtype == at::kFloat) run(0.0f); else run(0.0);
  return {g_rot, g_k, g_cen, g_fq, g_m, g_q, g_s};
}


// ---------------------------------------------------------------------------------------------------
// Training: the per-triangle half (triangle_frames and each frame's quaternion), forward and backward.

// d normalize(x) / dx applied to g: (g - u (u . g)) / |x| (x / eps below eps, as F.normalize)
template <typename S, int D>
void normalize_backward(const S* x, S len, const S* g, S* out) {
  if (len <= S(1e-12)) {
    for (int i = 0; i < D; ++i) out[i] = g[i] / S(1e-12);
    return;
  }
  S ug = 0;
  for (int i = 0; i < D; ++i) ug += x[i] * g[i];
  ug /= len * len;
  for (int i = 0; i < D; ++i) out[i] = (g[i] - x[i] * ug) / len;
}

struct FrameInputs {
  at::Tensor vertices, faces;
  int64_t nv, nf;
};

FrameInputs check_frame_inputs(const char* op, const at::Tensor& vertices, const at::Tensor& faces) {
  TORCH_CHECK(vertices.dim() == 2 && vertices.size(1) == 3 && faces.dim() == 2 && faces.size(1) == 3, op,
              ": vertices [V,3] and faces [F,3] expected");
  TORCH_CHECK(vertices.scalar_type() == at::kFloat || vertices.scalar_type() == at::kDouble, op,
              ": float32 or float64 vertices expected");
  TORCH_CHECK(vertices.device().is_cpu() && faces.device().is_cpu(), op, ": CPU tensors expected");
  FrameInputs in{vertices.contiguous(), faces.to(at::kLong).contiguous(), vertices.size(0), faces.size(0)};
  const int64_t* fa = in.faces.data_ptr<int64_t>();
  for (int64_t i = 0; i < 3 * in.nf; ++i) TORCH_CHECK(fa[i] >= 0 && fa[i] < in.nv, op, ": face index out of range");
  return in;
}

std::vector<at::Tensor> frames_forward(const at::Tensor& vertices_in, const at::Tensor& faces_in) {
  const FrameInputs in = check_frame_inputs("frames_forward", vertices_in, faces_in);
  const int64_t nf = in.nf;
  const auto opts = in.vertices.options();
  at::Tensor rot = at::empty({nf, 3, 3}, opts), scl = at::empty({nf}, opts), cen = at::empty({nf, 3}, opts);
  at::Tensor quat = at::empty({nf, 4}, opts);
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const S* v = in.vertices.data_ptr<S>();
    const int64_t* fa = in.faces.data_ptr<int64_t>();
    S *r = rot.data_ptr<S>(), *k = scl.data_ptr<S>(), *c = cen.data_ptr<S>(), *q = quat.data_ptr<S>();
    at::parallel_for(0, nf, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t f = lo; f < hi; ++f) {
        const Frame<S> fr(v + 3 * fa[3 * f], v + 3 * fa[3 * f + 1], v + 3 * fa[3 * f + 2]);
        for (int i = 0; i < 9; ++i) r[9 * f + i] = fr.m[i / 3][i % 3];
        k[f] = fr.k;
        for (int i = 0; i < 3; ++i) c[3 * f + i] = fr.c[i];
        fr.quat(q + 4 * f);
      }
    });
  };
  if (in.vertices.scalar_type() == at::kFloat) run(0.0f); else run(0.0);
  return {rot, scl, cen, quat};
}

at::Tensor frames_backward(const at::Tensor& vertices_in, const at::Tensor& faces_in, const at::Tensor& v_rot_in,
                           const at::Tensor& v_scales_in, const at::Tensor& v_cen_in, const at::Tensor& v_quats_in) {
  const FrameInputs in = check_frame_inputs("frames_backward", vertices_in, faces_in);
  const int64_t nf = in.nf, nv = in.nv;
  const auto dtype = in.vertices.scalar_type();
  const auto grad = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    if (t.numel() == 0) return t;
    TORCH_CHECK(t.sizes() == shape, "frames_backward: ", name, " has the wrong shape");
    return t.to(dtype).contiguous();
  };
  const at::Tensor vr = grad(v_rot_in, {nf, 3, 3}, "v_rotations"), vk = grad(v_scales_in, {nf}, "v_scales"),
                   vc = grad(v_cen_in, {nf, 3}, "v_centroids"), vq = grad(v_quats_in, {nf, 4}, "v_quats");
  at::Tensor v_vertices = at::zeros({nv, 3}, in.vertices.options());
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const S* v = in.vertices.data_ptr<S>();
    const int64_t* fa = in.faces.data_ptr<int64_t>();
    const S *gr = vr.numel() ? vr.data_ptr<S>() : nullptr, *gk = vk.numel() ? vk.data_ptr<S>() : nullptr;
    const S *gc = vc.numel() ? vc.data_ptr<S>() : nullptr, *gq = vq.numel() ? vq.data_ptr<S>() : nullptr;
    std::vector<S> corners(9 * nf);  // per face: the gradient of v0, v1, v2
    at::parallel_for(0, nf, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t f = lo; f < hi; ++f) {
        const Frame<S> fr(v + 3 * fa[3 * f], v + 3 * fa[3 * f + 1], v + 3 * fa[3 * f + 2]);
        S g_m[3][3] = {};
        if (gr)
          for (int i = 0; i < 9; ++i) g_m[i / 3][i % 3] = gr[9 * f + i];
        if (gq) {  // q = sign * normalize(candidate row `best`); the row is linear in m
          S g_row[4];
          normalize_backward<S, 4>(fr.cand[fr.best], fr.cand_norm, gq + 4 * f, g_row);
          for (int i = 0; i < 4; ++i) g_row[i] *= fr.sign;
          S(&gm)[3][3] = g_m;
          const S* g = g_row;
          switch (fr.best) {
            case 0:
              gm[0][0] += g[0], gm[1][1] += g[0], gm[2][2] += g[0];
              gm[2][1] += g[1], gm[1][2] -= g[1], gm[0][2] += g[2], gm[2][0] -= g[2], gm[1][0] += g[3], gm[0][1] -= g[3];
              break;
            case 1:
              gm[2][1] += g[0], gm[1][2] -= g[0];
              gm[0][0] += g[1], gm[1][1] -= g[1], gm[2][2] -= g[1];
              gm[0][1] += g[2], gm[1][0] += g[2], gm[0][2] += g[3], gm[2][0] += g[3];
              break;
            case 2:
              gm[0][2] += g[0], gm[2][0] -= g[0], gm[0][1] += g[1], gm[1][0] += g[1];
              gm[0][0] -= g[2], gm[1][1] += g[2], gm[2][2] -= g[2];
              gm[1][2] += g[3], gm[2][1] += g[3];
              break;
            default:
              gm[1][0] += g[0], gm[0][1] -= g[0], gm[0][2] += g[1], gm[2][0] += g[1];
              gm[1][2] += g[2], gm[2][1] += g[2];
              gm[0][0] -= g[3], gm[1][1] -= g[3], gm[2][2] += g[3];
          }
        }
        S g_ax[3], g_ay[3], g_n[3];
        for (int i = 0; i < 3; ++i) g_ax[i] = g_m[i][0], g_ay[i] = g_m[i][1], g_n[i] = g_m[i][2];
        S t[3];  // ay = n x ax
        cross3(fr.ax, g_ay, t);
        for (int i = 0; i < 3; ++i) g_n[i] += t[i];
        cross3(g_ay, fr.n, t);
        for (int i = 0; i < 3; ++i) g_ax[i] += t[i];
        S g_e0[3], g_nraw[3], g_d[3], g_e1[3] = {}, g_e2[3] = {};
        normalize_backward<S, 3>(fr.e0, fr.len0, g_ax, g_e0);
        normalize_backward<S, 3>(fr.nraw, fr.nraw_len, g_n, g_nraw);
        cross3(fr.d, g_nraw, t);  // nraw = e0 x d
        for (int i = 0; i < 3; ++i) g_e0[i] += t[i];
        cross3(g_nraw, fr.e0, g_d);
        if (gk) {  // k = (|e0| + |e1| + |e2|) / 3; the norm's gradient is 0 at 0, as torch's
          const S w = gk[f] / S(3);
          for (int i = 0; i < 3; ++i) {
            g_e0[i] += fr.len0 > 0 ? w * fr.e0[i] / fr.len0 : S(0);
            g_e1[i] += fr.len1 > 0 ? w * fr.e1[i] / fr.len1 : S(0);
            g_e2[i] += fr.len2 > 0 ? w * fr.e2[i] / fr.len2 : S(0);
          }
        }
        S* out = corners.data() + 9 * f;
        for (int i = 0; i < 3; ++i) {
          const S gci = gc ? gc[3 * f + i] / S(3) : S(0);
          out[i] = -g_e0[i] + g_e2[i] - g_d[i] + gci;      // v0
          out[3 + i] = g_e0[i] - g_e1[i] + gci;             // v1
          out[6 + i] = g_e1[i] - g_e2[i] + g_d[i] + gci;    // v2
        }
      }
    });
    S* vv = v_vertices.data_ptr<S>();
    for (int64_t f = 0; f < nf; ++f)  // in face order: the same sums for any thread count
      for (int corner = 0; corner < 3; ++corner)
        for (int i = 0; i < 3; ++i) vv[3 * fa[3 * f + corner] + i] += corners[9 * f + 3 * corner + i];
  };
  if (dtype == at::kFloat) run(0.0f); else run(0.0);
  return v_vertices;
}


// ---------------------------------------------------------------------------------------------------
// Training: the backward of residual_forward.

std::vector<at::Tensor> residual_backward(const at::Tensor& per_gaussian_in, const at::Tensor& hidden_bias_in,
                                          const at::Tensor& weight_in, const at::Tensor& v_out_in) {
  const int64_t n = per_gaussian_in.size(0), h = per_gaussian_in.size(1), b = hidden_bias_in.size(0);
  const int64_t o = weight_in.size(0);
  TORCH_CHECK(per_gaussian_in.dim() == 2 && hidden_bias_in.dim() == 2 && hidden_bias_in.size(1) == h &&
              weight_in.sizes() == at::IntArrayRef({o, h}) && v_out_in.sizes() == at::IntArrayRef({b, n, o}),
              "residual_backward: per_gaussian [N,H], hidden_bias [B,H], weight [O,H], v_out [B,N,O] expected");
  for (const at::Tensor* t : {&per_gaussian_in, &hidden_bias_in, &weight_in, &v_out_in})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, "residual_backward: float32 CPU tensors expected");
  const at::Tensor pg = per_gaussian_in.contiguous(), hb = hidden_bias_in.contiguous();
  const at::Tensor w = weight_in.contiguous(), vo = v_out_in.contiguous();
  const auto opts = pg.options();
  at::Tensor v_pg = at::empty({n, h}, opts), v_hb = at::zeros({b, h}, opts), v_w = at::zeros({o, h}, opts);
  at::Tensor v_bias = at::zeros({o}, opts);
  const float *pp = pg.data_ptr<float>(), *hp = hb.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float* vop = vo.data_ptr<float>();
  float* vpg = v_pg.data_ptr<float>();
  // Fixed blocks of Gaussians, each with its own partial sums of the per-frame, weight and bias gradients,
  // added in block order afterwards: the same bits for any thread count.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (n + kBlock - 1) / kBlock, width = b * h + o * h + o;
  std::vector<float> partial(blocks * width, 0.0f);
  at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
    aligned_vector<float> gs(h), act(h), gpg(h);
    for (int64_t blk = lo; blk < hi; ++blk) {
      float* part = partial.data() + blk * width;
      float *p_hb = part, *p_w = part + b * h, *p_bias = part + b * h + o * h;
      for (int64_t g = blk * kBlock; g < std::min(n, (blk + 1) * kBlock); ++g) {
        const float* row = pp + g * h;
        std::fill(gpg.begin(), gpg.end(), 0.0f);
        for (int64_t bi = 0; bi < b; ++bi) {
          const float *hrow = hp + bi * h, *go = vop + (bi * n + g) * o;
          float *s = gs.data(), *a = act.data(), *acc = gpg.data(), *ph = p_hb + bi * h;
          std::fill(gs.begin(), gs.end(), 0.0f);
          for (int64_t c = 0; c < o; ++c) {  // d out / d silu = W^T v_out
            const float gc = go[c];
            const float* wr = wp + c * h;
#pragma omp simd
            for (int64_t j = 0; j < h; ++j) s[j] += gc * wr[j];
          }
#pragma omp simd
          for (int64_t j = 0; j < h; ++j) {
            const float x = row[j] + hrow[j];
            const float sig = 1.0f / (1.0f + exp_s(-x));
            const float gh = s[j] * (sig * (1.0f + x * (1.0f - sig)));  // silu'(x) = sig (1 + x (1 - sig))
            a[j] = x * sig;
            acc[j] += gh;
            ph[j] += gh;
          }
          for (int64_t c = 0; c < o; ++c) {
            const float gc = go[c];
            float* wr = p_w + c * h;
#pragma omp simd
            for (int64_t j = 0; j < h; ++j) wr[j] += gc * a[j];
            p_bias[c] += gc;
          }
        }
        std::copy(gpg.begin(), gpg.end(), vpg + g * h);
      }
    }
  });
  float *vh = v_hb.data_ptr<float>(), *vw = v_w.data_ptr<float>(), *vb = v_bias.data_ptr<float>();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* part = partial.data() + blk * width;
    for (int64_t i = 0; i < b * h; ++i) vh[i] += part[i];
    for (int64_t i = 0; i < o * h; ++i) vw[i] += part[b * h + i];
    for (int64_t i = 0; i < o; ++i) vb[i] += part[b * h + o * h + i];
  }
  return {v_pg, v_hb, v_w, v_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vasa3d_composite, m) {
  m.def("avatar_forward(Tensor vertices, Tensor faces, Tensor binding, Tensor means, Tensor quats, "
        "Tensor log_scales, Tensor opacity_logits, Tensor color_logits, Tensor residual) -> Tensor[]",
        &avatar_forward);
  m.def("residual_forward(Tensor per_gaussian, Tensor hidden_bias, Tensor weight, Tensor bias) -> Tensor",
        &residual_forward);
  m.def("bind_forward(Tensor rotations, Tensor frame_scales, Tensor centroids, Tensor frame_quats, Tensor binding, "
        "Tensor means, Tensor quats, Tensor scales, bool anchors) -> Tensor[]",
        &bind_forward);
  m.def("bind_backward(Tensor rotations, Tensor frame_scales, Tensor centroids, Tensor frame_quats, Tensor binding, "
        "Tensor means, Tensor quats, Tensor scales, Tensor v_means, Tensor v_quats, Tensor v_scales, "
        "Tensor v_anchors) -> Tensor[]",
        &bind_backward);
  m.def("residual_backward(Tensor per_gaussian, Tensor hidden_bias, Tensor weight, Tensor v_out) -> Tensor[]",
        &residual_backward);
  m.def("frames_forward(Tensor vertices, Tensor faces) -> Tensor[]", &frames_forward);
  m.def("frames_backward(Tensor vertices, Tensor faces, Tensor v_rotations, Tensor v_scales, Tensor v_centroids, "
        "Tensor v_quats) -> Tensor",
        &frames_backward);
}
