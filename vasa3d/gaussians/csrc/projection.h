// Projection of 3D Gaussians to the image plane (forward and hand-written backward), one camera
// at a time: the per-Gaussian arithmetic of vasa3d.gaussians.projection (gsplat 1.5 conventions).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace vasa3d {

// Per-Gaussian passes are a few hundred flops each: below this many items one thread does them,
// which costs a millisecond at most and spares a thread barrier (expensive when cores are shared).
constexpr int64_t kSerialBelow = 1 << 17;

// One camera: world-to-camera rotation R (row-major) and translation t, intrinsics, and the
// limits of x/z and y/z that the Jacobian is clamped to (1.3 times the half field of view, as gsplat).
template <typename S>
struct Pinhole {
  S R[9], t[3], fx, fy, cx, cy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
  Pinhole(const S* viewmat, const S* K, int64_t width, int64_t height)
      : R{viewmat[0], viewmat[1], viewmat[2], viewmat[4], viewmat[5], viewmat[6], viewmat[8], viewmat[9], viewmat[10]},
        t{viewmat[3], viewmat[7], viewmat[11]}, fx(K[0]), fy(K[4]), cx(K[2]), cy(K[5]) {
    const S tan_fovx = S(0.5) * S(width) / fx, tan_fovy = S(0.5) * S(height) / fy;
    lim_x_pos = (S(width) - cx) / fx + S(0.3) * tan_fovx, lim_x_neg = cx / fx + S(0.3) * tan_fovx;
    lim_y_pos = (S(height) - cy) / fy + S(0.3) * tan_fovy, lim_y_neg = cy / fy + S(0.3) * tan_fovy;
  }
};

// One camera's projection of N Gaussians (the per-Gaussian arithmetic of project_gaussians).
template <typename S>
void project(const S* means, const S* quats, const S* scales, const S* viewmat, const S* K, int64_t n,
             int64_t width, int64_t height, S eps2d, S near_plane, S far_plane, S radius_clip,
             const S* opac, S min_opacity, S* m2d, S* conics, S* depths, int32_t* radii) {
  const Pinhole<S> cam(viewmat, K, width, height);
  const S *R = cam.R, *t = cam.t, fx = cam.fx, fy = cam.fy, cx = cam.cx, cy = cam.cy;
  const S lim_x_pos = cam.lim_x_pos, lim_x_neg = cam.lim_x_neg, lim_y_pos = cam.lim_y_pos, lim_y_neg = cam.lim_y_neg;
  at::parallel_for(0, n, kSerialBelow, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      const S* q = quats + 4 * g;
      const S qn = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), S(1e-12));
      const S w = q[0] / qn, x = q[1] / qn, y = q[2] / qn, z = q[3] / qn;
      const S rot[9] = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)};
      const S* s = scales + 3 * g;
      S M[9];  // camera-space R_view R_gauss S
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
          M[3 * i + j] = (R[3 * i] * rot[j] + R[3 * i + 1] * rot[3 + j] + R[3 * i + 2] * rot[6 + j]) * s[j];
      const S* p = means + 3 * g;
      const S tx = R[0] * p[0] + R[1] * p[1] + R[2] * p[2] + t[0];
      const S ty = R[3] * p[0] + R[4] * p[1] + R[5] * p[2] + t[1];
      const S tz = R[6] * p[0] + R[7] * p[1] + R[8] * p[2] + t[2];
      const S txc = tz * std::max(std::min(tx / tz, lim_x_pos), -lim_x_neg);
      const S tyc = tz * std::max(std::min(ty / tz, lim_y_pos), -lim_y_neg);
      // J M: the 2x3 image-plane footprint; cov2d = (J M)(J M)^T
      const S j00 = fx / tz, j02 = -fx * txc / (tz * tz), j11 = fy / tz, j12 = -fy * tyc / (tz * tz);
      S A[3], B[3];
      for (int j = 0; j < 3; ++j) A[j] = j00 * M[j] + j02 * M[6 + j], B[j] = j11 * M[3 + j] + j12 * M[6 + j];
      const S c00 = A[0] * A[0] + A[1] * A[1] + A[2] * A[2] + eps2d;
      const S c01 = A[0] * B[0] + A[1] * B[1] + A[2] * B[2];
      const S c11 = B[0] * B[0] + B[1] * B[1] + B[2] * B[2] + eps2d;
      const S det = std::max(c00 * c11 - c01 * c01, S(1e-10));
      const S mx = fx * tx / tz + cx, my = fy * ty / tz + cy;
      m2d[2 * g] = mx, m2d[2 * g + 1] = my;
      conics[3 * g] = c11 / det, conics[3 * g + 1] = -c01 / det, conics[3 * g + 2] = c00 / det;
      depths[g] = tz;
      const S rx = std::ceil(S(3.33) * std::sqrt(c00)), ry = std::ceil(S(3.33) * std::sqrt(c11));
      const bool valid = det > 0 && tz > near_plane && tz < far_plane && std::max(rx, ry) > radius_clip &&
                         opac[g] >= min_opacity;
      const bool inside = mx + rx > 0 && mx - rx < S(width) && my + ry > 0 && my - ry < S(height);
      const bool keep = valid && inside && std::isfinite(rx) && std::isfinite(ry);
      radii[2 * g] = keep ? static_cast<int32_t>(rx) : 0;
      radii[2 * g + 1] = keep ? static_cast<int32_t>(ry) : 0;
    }
  });
}

// Gradients of project() for one camera, added to v_means [N,3], v_quats [N,4], v_scales [N,3]
// (the arithmetic of torch autograd through projection.py, derived by hand). Gaussians culled in
// this camera (radii 0) receive nothing: none of their outputs reaches an image.
template <typename S>
void project_backward(const S* means, const S* quats, const S* scales, const S* viewmat, const S* K, int64_t n,
                      int64_t width, int64_t height, S eps2d, const int32_t* radii, const S* v_m2d,
                      const S* v_conics, const S* v_depths, S* v_means, S* v_quats, S* v_scales) {
  const Pinhole<S> cam(viewmat, K, width, height);
  const S *R = cam.R, *t = cam.t, fx = cam.fx, fy = cam.fy, cx = cam.cx, cy = cam.cy;
  const S lim_x_pos = cam.lim_x_pos, lim_x_neg = cam.lim_x_neg, lim_y_pos = cam.lim_y_pos, lim_y_neg = cam.lim_y_neg;
  at::parallel_for(0, n, kSerialBelow, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      if (radii[2 * g] <= 0 || radii[2 * g + 1] <= 0) continue;
      // forward, again
      const S* q = quats + 4 * g;
      const S qnorm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
      const S qn = std::max(qnorm, S(1e-12));
      const S w = q[0] / qn, x = q[1] / qn, y = q[2] / qn, z = q[3] / qn;
      const S rot[9] = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)};
      const S* s = scales + 3 * g;
      S VR[9], M[9];  // Rv Rg, and Rv Rg S
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          VR[3 * i + j] = R[3 * i] * rot[j] + R[3 * i + 1] * rot[3 + j] + R[3 * i + 2] * rot[6 + j];
          M[3 * i + j] = VR[3 * i + j] * s[j];
        }
      const S* p = means + 3 * g;
      const S tx = R[0] * p[0] + R[1] * p[1] + R[2] * p[2] + t[0];
      const S ty = R[3] * p[0] + R[4] * p[1] + R[5] * p[2] + t[1];
      const S tz = R[6] * p[0] + R[7] * p[1] + R[8] * p[2] + t[2];
      const S ux_raw = tx / tz, uy_raw = ty / tz;
      const S ux = std::max(std::min(ux_raw, lim_x_pos), -lim_x_neg);
      const S uy = std::max(std::min(uy_raw, lim_y_pos), -lim_y_neg);
      const S j00 = fx / tz, j02 = -fx * ux / tz, j11 = fy / tz, j12 = -fy * uy / tz;
      S A[3], B[3];
      for (int j = 0; j < 3; ++j) A[j] = j00 * M[j] + j02 * M[6 + j], B[j] = j11 * M[3 + j] + j12 * M[6 + j];
      const S c00 = A[0] * A[0] + A[1] * A[1] + A[2] * A[2] + eps2d;
      const S c01 = A[0] * B[0] + A[1] * B[1] + A[2] * B[2];
      const S c11 = B[0] * B[0] + B[1] * B[1] + B[2] * B[2] + eps2d;
      const S det_raw = c00 * c11 - c01 * c01;
      const S det = std::max(det_raw, S(1e-10));
      // conic (a, b, c) = (c11, -c01, c00) / det
      const S* vq = v_conics + 3 * g;
      S v_c00, v_c01, v_c11;
      {
        const S a = c11 / det, b = -c01 / det, c = c00 / det;
        // dL = va da + vb db + vc dc; through det when it is not clamped (as torch.clamp passes it)
        const S v_det = det_raw > S(1e-10) ? -(vq[0] * a + vq[1] * b + vq[2] * c) / det : S(0);
        v_c00 = vq[2] / det + v_det * c11;
        v_c11 = vq[0] / det + v_det * c00;
        v_c01 = -vq[1] / det - v_det * S(2) * c01;
      }
      S vA[3], vB[3];
      for (int j = 0; j < 3; ++j) {
        vA[j] = S(2) * v_c00 * A[j] + v_c01 * B[j];
        vB[j] = S(2) * v_c11 * B[j] + v_c01 * A[j];
      }
      S vM[9], v_j00 = 0, v_j02 = 0, v_j11 = 0, v_j12 = 0;
      for (int j = 0; j < 3; ++j) {
        vM[j] = j00 * vA[j];
        vM[3 + j] = j11 * vB[j];
        vM[6 + j] = j02 * vA[j] + j12 * vB[j];
        v_j00 += vA[j] * M[j], v_j02 += vA[j] * M[6 + j];
        v_j11 += vB[j] * M[3 + j], v_j12 += vB[j] * M[6 + j];
      }
      // camera-space mean: Jacobian entries, means2d, depth
      const S* vm2 = v_m2d + 2 * g;
      S v_tx = vm2[0] * fx / tz, v_ty = vm2[1] * fy / tz;
      S v_tz = -vm2[0] * fx * tx / (tz * tz) - vm2[1] * fy * ty / (tz * tz) + v_depths[g];
      v_tz += -v_j00 * fx / (tz * tz) - v_j11 * fy / (tz * tz);
      // j02 = -fx u / tz with u = clamp(tx / tz): explicit tz, then u (only where the clamp passes it)
      v_tz += v_j02 * fx * ux / (tz * tz) + v_j12 * fy * uy / (tz * tz);
      const S v_ux = -v_j02 * fx / tz, v_uy = -v_j12 * fy / tz;
      if (ux_raw <= lim_x_pos && ux_raw >= -lim_x_neg) v_tx += v_ux / tz, v_tz -= v_ux * tx / (tz * tz);
      if (uy_raw <= lim_y_pos && uy_raw >= -lim_y_neg) v_ty += v_uy / tz, v_tz -= v_uy * ty / (tz * tz);
      S* gm = v_means + 3 * g;
      for (int i = 0; i < 3; ++i) gm[i] += R[i] * v_tx + R[3 + i] * v_ty + R[6 + i] * v_tz;
      // M = Rv Rg S: G = Rv^T vM; v_Rg[k][j] = G[k][j] s[j], v_s[j] = sum_k (Rv Rg)... via G
      S G[9];
      for (int k = 0; k < 3; ++k)
        for (int j = 0; j < 3; ++j) G[3 * k + j] = R[k] * vM[j] + R[3 + k] * vM[3 + j] + R[6 + k] * vM[6 + j];
      S vr[9];
      S* gs = v_scales + 3 * g;
      for (int j = 0; j < 3; ++j) {
        gs[j] += rot[j] * G[j] + rot[3 + j] * G[3 + j] + rot[6 + j] * G[6 + j];
        for (int k = 0; k < 3; ++k) vr[3 * k + j] = G[3 * k + j] * s[j];
      }
      // rotation matrix -> normalised quaternion -> raw quaternion
      const S vw = S(2) * (-z * vr[1] + y * vr[2] + z * vr[3] - x * vr[5] - y * vr[6] + x * vr[7]);
      const S vx = S(2) * (y * vr[1] + z * vr[2] + y * vr[3] - S(2) * x * vr[4] - w * vr[5] + z * vr[6] + w * vr[7] -
                           S(2) * x * vr[8]);
      const S vy = S(2) * (-S(2) * y * vr[0] + x * vr[1] + w * vr[2] + x * vr[3] + z * vr[5] - w * vr[6] + z * vr[7] -
                           S(2) * y * vr[8]);
      const S vz = S(2) * (-S(2) * z * vr[0] - w * vr[1] + x * vr[2] + w * vr[3] - S(2) * z * vr[4] + y * vr[5] +
                           x * vr[6] + y * vr[7]);
      const S dot = w * vw + x * vx + y * vy + z * vz;
      S* gq = v_quats + 4 * g;
      const bool clamped = qnorm < S(1e-12);
      gq[0] += clamped ? vw / qn : (vw - w * dot) / qn;
      gq[1] += clamped ? vx / qn : (vx - x * dot) / qn;
      gq[2] += clamped ? vy / qn : (vy - y * dot) / qn;
      gq[3] += clamped ? vz / qn : (vz - z * dot) / qn;
    }
  });
}

}  // namespace vasa3d
