"""``MeshLiftTeacher``: a training-free reenactor that runs offline on any portrait.

The portrait is lifted onto the head template: the template is fitted to its landmarks
(identity offsets), Gaussians bound to the template are painted from the photo where they
face the camera; what the photo hides (visible at large poses) is completed from its mirror
image and from hair and skin priors (:mod:`vasa3d.teachers.completion`), and each frame comes
with a per-pixel reliability: observed, completed or guessed. The expression rig then drives
the mesh with each latent's controls (mouth, lips, brows, blinks), the pose turns the head
(the neck bends), the eye texture slides with the gaze and the lids close over the eyes, and
the mouth pocket shows teeth and a dark interior when the jaw opens. Frames are rendered with
our rasteriser in the portrait's aligned-crop camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vasa3d.face.analysis import PortraitAnalysis
from vasa3d.face.template import load_template
from vasa3d.gaussians.head import GaussianHead
from vasa3d.gaussians.render import Backend, rasterize
from vasa3d.face.region import head_region
from vasa3d.losses.geometry import laplacian_smoothness, mesh_edges
from vasa3d.losses.consistency import photometric_losses
from vasa3d.losses.landmarks import project_points
from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.rig import BLINK_LEFT, BLINK_RIGHT, ExpressionRig, controls_from_latent
from vasa3d.teachers.base import TeacherOutput
from vasa3d.teachers.completion import complete_head_colors

TEETH_RGB = (0.92, 0.90, 0.84)
MOUTH_RGB = (0.28, 0.07, 0.08)


def fit_identity(head: GaussianHead, landmarks_px: Tensor, viewmat: Tensor, K: Tensor, image_size: int,
                 steps: int = 200, w_laplacian: float = 100.0) -> None:
    """Fit ``head.shape_offsets`` so its 468 landmark vertices project onto ``landmarks_px [468, 2]``."""
    edges = mesh_edges(head.faces)
    optimizer = torch.optim.Adam([head.shape_offsets], lr=5e-4)
    for _ in range(steps):
        loss = _landmark_loss(head, landmarks_px, viewmat, K, image_size) \
            + w_laplacian * laplacian_smoothness(head.shape_offsets, edges)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _landmark_loss(head: GaussianHead, landmarks_px: Tensor, viewmat: Tensor, K: Tensor, image_size: int) -> Tensor:
    verts = head.vertices()[: landmarks_px.shape[0]]
    return (project_points(verts, viewmat, K) - landmarks_px).norm(dim=-1).mean() / image_size


def refine_photometric(head: GaussianHead, image: Tensor, mask: Tensor, region: Tensor, landmarks_px: Tensor,
                       viewmat: Tensor, K: Tensor, steps: int, background: Tensor, backend: Backend = "auto") -> None:
    """A short fit of the Gaussians (and identity shape) to the one photo: L1 + D-SSIM + silhouette
    inside ``region [1, S, S]``, landmarks and smoothness; no densification."""
    size = image.shape[-1]
    edges = mesh_edges(head.faces)
    target = image * mask + background[:, None, None] * (1 - mask)
    groups = [{"params": [head.splats["colors"]], "lr": 0.02}, {"params": [head.splats["opacities"]], "lr": 0.05},
              {"params": [head.splats["scales"]], "lr": 0.005}, {"params": [head.splats["means"]], "lr": 0.005},
              {"params": [head.splats["quats"]], "lr": 0.001}, {"params": [head.shape_offsets], "lr": 2e-4}]
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    for _ in range(steps):
        out = head.render(viewmat[None], K[None], size, size, background=background, backend=backend)
        render, alpha = out.rgb.permute(0, 3, 1, 2), out.alpha.permute(0, 3, 1, 2)
        photo = photometric_losses(render, alpha, target[None], mask[None], region[None])
        loss = 0.8 * photo["l1"] + 0.2 * photo["dssim"] + 0.3 * photo["silhouette"] \
            + _landmark_loss(head, landmarks_px, viewmat, K, size) \
            + 100.0 * laplacian_smoothness(head.shape_offsets, edges)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@dataclass
class _LiftedPortrait:
    head: GaussianHead
    identity: Tensor  # [V, 3] identity-shaped neutral vertices
    image: Tensor  # [3, S, S]
    viewmat: Tensor
    K: Tensor
    eye_ids: Tensor  # [E] Gaussians on the eye caps
    eye_side: Tensor  # [E] 0 = subject's right, 1 = left
    eye_points: Tensor  # [E, 3] their neutral positions
    lid_rgb: Tensor  # [2, 3] skin colour above each eye
    reliability: Tensor  # [N] 1 = observed in the portrait, lower = completed or guessed


class MeshLiftTeacher:
    """Animate a portrait by lifting it onto the head template (no trained weights).

    Args:
        num_gaussians: Gaussians on the lifted head.
        identity_steps: optimisation steps fitting the template to the portrait's landmarks.
        refine_steps: steps of a short photometric fit of the Gaussians to the portrait (sharper frames).
        background: RGB behind the head, in [0, 1].
        backend: renderer backend.
        seed: seed of the Gaussian placement.
        template_path: head template .npz; None uses the packaged one.
        complete: complete what the portrait hides (mirror image, hair and skin priors) instead of copying the
            nearest painted Gaussian; frames then come with a per-pixel reliability.
        subject_only: paint only the chosen person (:func:`vasa3d.face.region.head_region`); False keeps the
            whole foreground above the chin (the earlier behaviour, for comparisons).
    """

    def __init__(
        self,
        num_gaussians: int = 30000,
        identity_steps: int = 200,
        refine_steps: int = 150,
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        backend: Backend = "auto",
        seed: int = 0,
        template_path: str | None = None,
        complete: bool = True,
        subject_only: bool = True,
    ) -> None:
        self.num_gaussians = num_gaussians
        self.identity_steps = identity_steps
        self.refine_steps = refine_steps
        self.background = torch.tensor(background, dtype=torch.float32)
        self.backend = backend
        self.seed = seed
        self.complete = complete
        self.subject_only = subject_only
        self.template = load_template(template_path)
        self.rig = ExpressionRig(self.template)
        self._cached: tuple[PortraitAnalysis, _LiftedPortrait] | None = None

    def lift(self, portrait: PortraitAnalysis) -> _LiftedPortrait:
        """The portrait lifted onto the template (cached per analysis object)."""
        if self._cached is None or self._cached[0] is not portrait:  # holding the object keeps identity safe
            self._cached = (portrait, self._lift(portrait))
        return self._cached[1]

    @torch.no_grad()
    def _lift(self, portrait: PortraitAnalysis) -> _LiftedPortrait:
        size = portrait.crop.shape[0]
        image = torch.from_numpy(portrait.crop).permute(2, 0, 1).float().contiguous()
        mask = torch.from_numpy(portrait.mask)[None].float()
        viewmat = torch.from_numpy(portrait.viewmat).float()
        K = torch.from_numpy(portrait.K).float()
        head = GaussianHead(self.template.vertices, self.template.faces, self.num_gaussians, seed=self.seed)
        landmarks = torch.from_numpy(portrait.landmarks[:468, :2].copy()).float()
        region = torch.from_numpy(head_region(portrait, subject_only=self.subject_only))[None]
        with torch.enable_grad():
            fit_identity(head, landmarks, viewmat, K, size, self.identity_steps)
            painted = head.paint_from_image(image, mask * region, viewmat, K)
            refine_photometric(head, image, mask, region, landmarks, viewmat, K, self.refine_steps, self.background,
                               self.backend)
        head.requires_grad_(False)
        identity = head.vertices().detach()

        region_of = {name: self.template.bound_to(head.binding, name) for name in self.template.regions}
        means = head.world_gaussians()["means"]
        colors = torch.sigmoid(head.splats["colors"])
        reliability = torch.ones(head.num_gaussians)
        if self.complete:
            colors, reliability = complete_head_colors(head, identity, colors, mask * region, viewmat, K,
                                                       region_of, self.backend)
            head.set_colors(colors)
        interior = region_of["mouth_interior"] & ~painted
        if interior.any():  # procedural teeth at the front top of the pocket, dark behind
            centre = means[interior].mean(0)
            teeth = interior & (means[:, 1] > centre[1]) & (means[:, 2] > centre[2])
            colors[interior] = torch.tensor(MOUTH_RGB)
            colors[teeth] = torch.tensor(TEETH_RGB)
            head.set_colors(colors)
        eyes = region_of["left_eye"] | region_of["right_eye"]
        eye_ids = torch.nonzero(eyes).squeeze(-1)
        eye_side = (means[eye_ids, 0] > 0).long()  # +x is the subject's left
        lid_rgb = torch.stack([self._lid_colour(means, colors, eyes, means[eye_ids][eye_side == side])
                               for side in (0, 1)])
        reliability[eye_ids] = 1.0
        reliability[interior] = 1.0  # procedural, but the same in every frame the student sees
        return _LiftedPortrait(head, identity, image, viewmat, K, eye_ids, eye_side, means[eye_ids].clone(), lid_rgb,
                               reliability)

    @staticmethod
    def _lid_colour(means: Tensor, colors: Tensor, eyes: Tensor, eye_points: Tensor) -> Tensor:
        centre = eye_points.mean(0)
        radius = (eye_points - centre).norm(dim=-1).max()
        near = ((means - centre).norm(dim=-1) < 1.6 * radius) & (means[:, 1] > centre[1] + 0.3 * radius) & ~eyes
        return colors[near].mean(0) if near.any() else colors[eyes].mean(0)

    @torch.no_grad()
    def generate(self, portrait: PortraitAnalysis, latents: MotionLatent) -> TeacherOutput:
        """Frames ``[T, 3, S, S]`` of ``portrait`` showing ``latents [T]`` (S = the portrait's crop size)."""
        if latents.pose.dim() != 2:
            raise ValueError(f"MeshLiftTeacher.generate: latents must be a clip [T], got batch shape "
                             f"{tuple(latents.batch_shape)}")
        lifted = self.lift(portrait)
        size = lifted.image.shape[-1]
        controls = controls_from_latent(latents).float()
        deformed = self.rig.deform(lifted.identity, controls)  # [T, V, 3]
        posed = self.rig.pose(deformed, latents.pose.float())
        iris = self.rig.iris(deformed, None if latents.gaze is None else latents.gaze.float())
        head_tf = latents.head_transform().float()
        iris = iris @ head_tf[:, :3, :3].transpose(-1, -2) + head_tf[:, None, :3, 3]
        landmarks = project_points(torch.cat([posed[:, :468], iris], dim=1), lifted.viewmat, lifted.K)

        frames, masks, reliability = [], [], []
        # One render per frame: the reliability rides as a fourth channel; the background is known exactly,
        # so it is 1 where no Gaussian covers a pixel.
        background = torch.cat([self.background, torch.ones(1)]) if self.complete else self.background
        for t in range(len(latents)):
            g = lifted.head.world_gaussians(posed[t])
            colors = g["colors"].clone()
            colors[lifted.eye_ids] = self._eye_colours(lifted, self._iris_shift(deformed[t], latents, t),
                                                       blink=controls[t, [BLINK_RIGHT, BLINK_LEFT]])
            if self.complete:
                colors = torch.cat([colors, lifted.reliability[:, None]], dim=-1)
            out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], colors, lifted.viewmat[None],
                            lifted.K[None], size, size, backgrounds=background, backend=self.backend)
            rgb = out.rgb[0].permute(2, 0, 1).clamp(0, 1)
            frames.append(rgb[:3])
            masks.append(out.alpha[0].permute(2, 0, 1))
            if self.complete:
                reliability.append(rgb[3:])
        return TeacherOutput(torch.stack(frames), torch.stack(masks), latents, landmarks,
                             torch.stack(reliability) if reliability else None)

    def _iris_shift(self, deformed: Tensor, latents: MotionLatent, t: int) -> Tensor:
        """``[2, 3]`` template-frame shift of each iris centre (right, left) caused by the gaze alone."""
        if latents.gaze is None:
            return torch.zeros(2, 3)
        turned = self.rig.iris(deformed, latents.gaze[t].float())
        still = self.rig.iris(deformed)
        return (turned - still).reshape(2, 5, 3)[:, 0]

    def _eye_colours(self, lifted: _LiftedPortrait, iris_shift: Tensor, blink: Tensor) -> Tensor:
        """Eye-cap colours: the photo's eye texture slid by the gaze, closed over by the lid colour."""
        source = lifted.eye_points - iris_shift[lifted.eye_side]
        pix = project_points(source, lifted.viewmat, lifted.K)
        size = lifted.image.shape[-1]
        grid = (pix / size * 2 - 1)[None, None]
        rgb = torch.nn.functional.grid_sample(lifted.image[None], grid, align_corners=False)[0, :, 0].T
        closure = blink.clamp(0, 1)[lifted.eye_side, None]  # blink is (right, left), eye_side 0 = right
        return rgb * (1 - closure) + lifted.lid_rgb[lifted.eye_side] * closure
