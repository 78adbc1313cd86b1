"""``LandmarkMotionEncoder``: 478 face landmarks (or a frame) -> an identity-normalised ``MotionLatent``.

Per frame:

1. Pose. The landmarks are lifted to 3D (x, y in px; mediapipe's z in px, the same scale as x) and
   aligned to the subject's neutral 3D landmarks on stable points (nose bridge, eye corners, upper
   face oval: the points the rig never moves) by a similarity (Umeyama), which seeds a perspective
   ``cv2.solvePnP`` refinement with the crop's ``K``. That gives the template-to-camera transform;
   the latent pose is it relative to the encoder's ``viewmat`` (default: the reference portrait's own
   camera, so the reference has zero pose): ``viewmat @ latent.head_transform() = template-to-camera``.
2. Expression. Each landmark is lifted along its camera ray to the depth its z gives, the pose is
   undone (template frame, metres), and the subject's own neutral is subtracted, so identity cancels;
   the rig's 12 controls and the gaze are then fitted to that displacement by damped Gauss-Newton
   through ``ExpressionRig.landmarks`` on the subject's neutral shape (the rig scales its amplitudes
   by the inter-ocular distance), clamped to ``CONTROL_BOUNDS``.

The subject's neutral comes from the reference portrait's landmarks (assumed neutral and looking at
the camera, or minus ``reference_controls`` when given), placed in the template frame by its pose
(rotation from the 3D similarity fit, which keeps the subject's face shape from tilting it).
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import torch
from mediapipe.python.solutions import face_mesh_connections as fmc
from torch import Tensor

from vasa3d.motion.latent import MotionLatent, matrix_to_axis_angle
from vasa3d.motion.rig import CONTROL_BOUNDS, EYE_CORNERS, NUM_CONTROLS, ExpressionRig, latent_from_controls

FRONTAL = np.diag([1.0, -1.0, -1.0])  # template axes -> OpenCV camera axes for a camera facing the face
STABLE_MOTION_M = 3e-4  # a landmark is "stable" if no control at 1.0 moves it further than this
GAZE_BOUNDS = (-0.8, 0.8)  # radians


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``target ~ s * R @ source + t`` (least squares) for ``[N, 3]`` point sets: (s, R [3,3], t [3])."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(dst.T @ src / len(source))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign) / (src**2).sum(axis=1).mean())
    return scale, rot, mu_t - scale * rot @ mu_s


def stable_landmarks(rig: ExpressionRig) -> np.ndarray:
    """Indices of face landmarks that no single rig control (at +-1) moves by more than ``STABLE_MOTION_M``,
    between the mouth corners and the brows, eyelids excluded (eye corners kept): the rigid part of the face."""
    verts = rig.template_vertices[: rig.num_landmark_vertices]
    eye = torch.eye(NUM_CONTROLS, dtype=verts.dtype)
    motion = (rig.landmarks(verts, torch.cat([eye, -eye]))[:, :468] - verts).norm(dim=-1).amax(dim=0)
    y = verts[:, 1]
    band = (y > verts[[61, 291], 1].mean() + 0.01) & (y < verts[[105, 334], 1].mean())
    lids = {v for contour in (fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE) for e in contour for v in e}
    lids -= {v for corners in EYE_CORNERS for v in corners}
    band[sorted(lids)] = False
    return torch.nonzero((motion < STABLE_MOTION_M) & band).squeeze(-1).numpy()


class LandmarkMotionEncoder:
    """Landmarks ``[T, 478, 3]`` (crop px; x right, y down, mediapipe z in px) -> ``MotionLatent``.

    Runs on the CPU in float64 (an analysis step, not part of a training graph).

    Args:
        reference_landmarks: ``[478, 3]`` the subject's portrait landmarks (``PortraitAnalysis.landmarks``).
        K: ``[3, 3]`` intrinsics of the crop the landmarks are in, px.
        dim: D, the size of ``MotionLatent.dyn`` (>= 12: the rig controls, then zero residual channels).
        reference_controls: ``[12]`` the portrait's expression if it is not neutral; None = neutral.
        viewmat: ``[4, 4]`` world(template)-to-camera the latent pose is relative to; None = the
            reference portrait's camera (the reference then has zero pose).
        rig: the expression rig to fit; None builds the default one.
        iterations: Gauss-Newton iterations of the expression fit.
        damping: Tikhonov weight pulling the controls and gaze toward 0, relative to the landmark motion
            of a unit control (about 1 cm).
        depth_weight: weight of the (noisier) depth residuals relative to x and y.
        iris_weight: weight of the iris landmarks (they alone carry the gaze).
    """

    def __init__(
        self,
        reference_landmarks: np.ndarray | Tensor,
        K: np.ndarray | Tensor,
        dim: int = 32,
        reference_controls: np.ndarray | Tensor | None = None,
        viewmat: np.ndarray | Tensor | None = None,
        rig: ExpressionRig | None = None,
        iterations: int = 6,
        damping: float = 1e-3,
        depth_weight: float = 0.5,
        iris_weight: float = 2.0,
    ) -> None:
        if dim < NUM_CONTROLS:
            raise ValueError(f"LandmarkMotionEncoder: dim={dim} is smaller than the {NUM_CONTROLS} rig controls; "
                             f"use dim >= {NUM_CONTROLS}")
        self.dim, self.iterations, self.damping = dim, iterations, damping
        self.rig = (ExpressionRig() if rig is None else copy.deepcopy(rig)).double()
        self.K = _as_array(K, (3, 3), "K")
        reference = _as_array(reference_landmarks, (478, 3), "reference_landmarks")
        self.stable = stable_landmarks(self.rig)
        zeros = torch.zeros(NUM_CONTROLS, dtype=torch.float64)
        template = self.rig.landmarks(self.rig.template_vertices[: self.rig.num_landmark_vertices], zeros).numpy()
        # The portrait's pose against the template, then its landmarks in the template frame.
        ref_rot, ref_trans = self._fit_pose(reference, template, self.K, refine_rotation=False)
        neutral = self._lift(reference, ref_rot, ref_trans, template, self.K, calibrate_depth=False)
        if reference_controls is not None:
            controls = torch.as_tensor(np.asarray(reference_controls), dtype=torch.float64).reshape(NUM_CONTROLS)
            observed = torch.from_numpy(neutral)
            subject = observed.clone()
            for _ in range(10):  # neutral = observed - rig motion(neutral); a contraction for blinks < 1
                motion = self.rig.landmarks(subject[:468], controls) - self.rig.landmarks(subject[:468], 0 * controls)
                subject = observed - motion
            neutral = subject.numpy()
        self.neutral = neutral  # [478, 3] the subject's neutral landmarks, template frame, metres
        self.reference_camera = _rigid(ref_rot, ref_trans)
        self.viewmat = self.reference_camera if viewmat is None else _as_array(viewmat, (4, 4), "viewmat")
        weights = np.ones((478, 3))
        weights[:, 2] = depth_weight
        weights[468:] *= iris_weight
        self.residual_weights = torch.from_numpy(np.sqrt(weights)).reshape(-1)  # [478 * 3]

    @classmethod
    def from_portrait(cls, analysis, dim: int = 32, **kwargs) -> "LandmarkMotionEncoder":
        """An encoder for the subject of a ``PortraitAnalysis`` (its crop landmarks and ``K``)."""
        return cls(analysis.landmarks, analysis.K, dim=dim, **kwargs)

    def frontal_viewmat(self) -> np.ndarray:
        """``[4, 4]`` a camera looking straight at the face from where the reference camera sees the head
        centre; with it the latent pose is the head's rotation relative to facing the camera."""
        out = self.reference_camera.copy()
        out[:3, :3] = FRONTAL
        return out

    # ------------------------------------------------------------ geometry
    def _fit_pose(self, landmarks: np.ndarray, model: np.ndarray, K: np.ndarray,
                  refine_rotation: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Template-to-camera (R [3,3], t [3]) that projects ``model`` [478,3] onto ``landmarks`` [478,3] px.

        The rotation comes from a 3D similarity fit (weak perspective, using z), then, with
        ``refine_rotation``, from ``cv2.solvePnP``; without, only the translation is refined (used for the
        reference against the template, where the depth helps keep the subject's shape from tilting it).
        """
        ids = self.stable
        lifted = landmarks[ids] * [1.0, -1.0, -1.0]  # px, template-like axes (y up, z toward the camera)
        scale, rot, trans = umeyama(model[ids], lifted)
        rot_cam = FRONTAL @ rot
        posed = model[ids] @ rot_cam.T
        if not refine_rotation:  # least squares on (u - cx) (Z + tz) = fx (X + tx), likewise for v
            (fx, fy), (cx, cy) = K[[0, 1], [0, 1]], K[:2, 2]
            u, v = landmarks[ids, 0] - cx, landmarks[ids, 1] - cy
            zero, one = np.zeros_like(u), np.ones_like(u)
            lhs = np.concatenate([np.stack([fx * one, zero, -u], 1), np.stack([zero, fy * one, -v], 1)])
            rhs = np.concatenate([u * posed[:, 2] - fx * posed[:, 0], v * posed[:, 2] - fy * posed[:, 1]])
            return rot_cam, np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        t_cam = np.array([(trans[0] - K[0, 2]) / scale, -(trans[1] + K[1, 2]) / scale * K[0, 0] / K[1, 1],
                          K[0, 0] / scale - posed[:, 2].mean()])  # weak perspective: scale = px per metre
        ok, rvec, tvec = cv2.solvePnP(model[ids], np.ascontiguousarray(landmarks[ids, :2]), K, None,
                                      cv2.Rodrigues(rot_cam)[0], t_cam[:, None].copy(), True, cv2.SOLVEPNP_ITERATIVE)
        if not ok or not np.isfinite(tvec).all() or tvec[2, 0] <= 0:
            return rot_cam, t_cam  # keep the weak-perspective estimate
        return cv2.Rodrigues(rvec)[0], tvec[:, 0]

    def _lift(self, landmarks: np.ndarray, rot: np.ndarray, trans: np.ndarray, model: np.ndarray,
              K: np.ndarray, calibrate_depth: bool = True) -> np.ndarray:
        """Landmarks [478,3] px -> template frame [478,3] m: each along its ray, at the depth its z gives.

        With ``calibrate_depth`` z maps to depth by a line fitted on the stable points of the posed
        ``model`` (the subject's own neutral: then the frame and the neutral agree, whatever z's scale);
        without, z is taken in px at the stable points' mean depth (for the reference against the
        template, whose shape is not the subject's)."""
        ids = self.stable
        model_depth = (model[ids] @ rot.T + trans)[:, 2]
        if calibrate_depth:  # z's origin and scale from the posed model's stable depths
            scale, offset = np.polyfit(landmarks[ids, 2], model_depth, 1)
        else:  # z in px at the stable points' mean depth (mediapipe: z has the scale of x)
            scale = model_depth.mean() / K[0, 0]
            offset = model_depth.mean() - scale * landmarks[ids, 2].mean()
        depth = offset + scale * landmarks[:, 2]
        rays = np.linalg.solve(K, np.concatenate([landmarks[:, :2], np.ones((len(landmarks), 1))], 1).T).T
        camera = rays * depth[:, None]
        return (camera - trans) @ rot

    # ------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(self, landmarks: np.ndarray | Tensor, K: np.ndarray | Tensor | None = None) -> MotionLatent:
        """Encode ``[T, 478, 3]`` (or ``[478, 3]``) landmarks in px of a crop with intrinsics ``K``
        (default: the reference's). Returns a ``MotionLatent`` with ``[T]`` (or no) leading dimension."""
        single = np.ndim(landmarks) == 2
        frames = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, Tensor) else landmarks, np.float64)
        frames = frames[None] if single else frames
        if frames.ndim != 3 or frames.shape[1:] != (478, 3):
            raise ValueError(f"LandmarkMotionEncoder.encode: landmarks must be [T, 478, 3] (mediapipe with iris), "
                             f"got {tuple(np.shape(landmarks))}")
        K = self.K if K is None else _as_array(K, (3, 3), "K")
        poses, displacements = [], []
        for frame in frames:
            rot, trans = self._fit_pose(frame, self.neutral, K)
            head = np.linalg.inv(self.viewmat) @ _rigid(rot, trans)
            poses.append(np.concatenate([matrix_to_axis_angle(torch.from_numpy(head[:3, :3])).numpy(), head[:3, 3]]))
            displacements.append(self._lift(frame, rot, trans, self.neutral, K) - self.neutral)
        controls, gaze = self.fit_expression(torch.from_numpy(np.stack(displacements)))
        latent = latent_from_controls(controls.float(), torch.from_numpy(np.stack(poses)).float(), self.dim,
                                      gaze.float())
        return latent[0] if single else latent

    def fit_expression(self, displacement: Tensor) -> tuple[Tensor, Tensor]:
        """Rig controls ``[T, 12]`` and gaze ``[T, 2]`` whose landmark motion on the subject's neutral best
        matches ``displacement [T, 478, 3]`` (template frame, metres; observed minus neutral)."""
        neutral = torch.from_numpy(self.neutral[:468])
        zeros = torch.zeros(NUM_CONTROLS, dtype=torch.float64)
        rest = self.rig.landmarks(neutral, zeros, torch.zeros(2, dtype=torch.float64))
        weights = self.residual_weights

        def motion(params: Tensor) -> Tensor:  # [..., 14] -> [..., 478 * 3], weighted
            moved = self.rig.landmarks(neutral, params[..., :NUM_CONTROLS], params[..., NUM_CONTROLS:])
            return (moved - rest).flatten(-2) * weights

        count = NUM_CONTROLS + 2
        bounds = torch.tensor(CONTROL_BOUNDS + (GAZE_BOUNDS, GAZE_BOUNDS), dtype=torch.float64)
        # The damping is relative to the residuals' scale: a control of 1 moves landmarks by ~1 cm.
        damping = self.damping * 1e-4 * torch.eye(count, dtype=torch.float64)
        steps = 1e-4 * torch.cat([torch.zeros(1, count), torch.eye(count), -torch.eye(count)]).double()
        fitted = []
        for chunk in displacement.split(64):  # bounded memory for long clips
            target = chunk.reshape(len(chunk), -1) * weights
            params = torch.zeros(len(chunk), count, dtype=torch.float64)
            for _ in range(self.iterations):
                # one batched rig call: the current parameters and central differences around them
                values = motion(params[:, None] + steps)  # [t, 1 + 2 * count, M]
                jac = ((values[:, 1: 1 + count] - values[:, 1 + count:]) / 2e-4).transpose(1, 2)  # [t, M, count]
                normal = jac.transpose(1, 2) @ jac + damping
                gradient = (jac.transpose(1, 2) @ (target - values[:, 0])[..., None])[..., 0] - params @ damping
                params = params + torch.linalg.solve(normal, gradient)
                params = torch.maximum(torch.minimum(params, bounds[:, 1]), bounds[:, 0])
            fitted.append(params)
        params = torch.cat(fitted)
        return params[:, :NUM_CONTROLS], params[:, NUM_CONTROLS:]

    def encode_frame(self, image, K: np.ndarray | Tensor | None = None, min_face_px: int = 32) -> MotionLatent:
        """Encode one frame (path or array, see ``vasa3d.face.load_image``) via ``analyze_portrait``.

        The frame must be in the camera ``K`` (default: the reference's), e.g. a teacher frame rendered
        in the portrait's crop camera; its landmarks are used in its own pixel coordinates.
        """
        from vasa3d.face.analysis import analyze_portrait

        analysis = analyze_portrait(image, crop_size=64, min_face_px=min_face_px)
        return self.encode(analysis.landmarks_image, K)


def _as_array(value: np.ndarray | Tensor, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"LandmarkMotionEncoder: {name} must be {list(shape)}, got {list(array.shape)}")
    return array


def _rigid(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, trans
    return out
