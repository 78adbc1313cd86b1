"""The procedural expression rig: each control's motion, symmetry, scaling, gaze, pose and the latent convention."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from vasa3d.face.template import load_template
from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.rig import (
    CONTROL_NAMES,
    NUM_CONTROLS,
    ExpressionRig,
    controls_from_latent,
    latent_from_controls,
)

MM = 1e-3


@pytest.fixture(scope="module")
def rig():
    return ExpressionRig().double()


@pytest.fixture(scope="module")
def verts():
    return torch.tensor(load_template().vertices, dtype=torch.float64)


def control(name: str, value: float = 1.0) -> torch.Tensor:
    out = torch.zeros(NUM_CONTROLS, dtype=torch.float64)
    out[CONTROL_NAMES.index(name)] = value
    return out


def motion(rig, verts, name, value=1.0):
    return rig.deform(verts, control(name, value)) - verts


def mirror_partners(points: np.ndarray) -> np.ndarray:
    dist, partner = cKDTree(points).query(points * [-1.0, 1.0, 1.0])
    assert dist.max() < 1e-5
    return partner


def self_intersections(verts: np.ndarray, faces: np.ndarray) -> set[tuple[int, int]]:
    """(edge, triangle) pairs where an edge crosses a triangle it does not touch (segment vs triangle)."""
    edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1), axis=0)
    tri = verts[faces]
    centre = tri.mean(axis=1)
    reach = np.linalg.norm(tri - centre[:, None], axis=-1).max()
    mid, half = verts[edges].mean(axis=1), 0.5 * np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1)
    near = cKDTree(centre).query_ball_point(mid, half + reach)
    ei = np.repeat(np.arange(len(edges)), [len(n) for n in near])
    fi = np.concatenate(near).astype(int)
    keep = ~(faces[fi][:, :, None] == edges[ei][:, None, :]).any(axis=(1, 2))
    ei, fi = ei[keep], fi[keep]
    p0, d = verts[edges[ei, 0]], verts[edges[ei, 1]] - verts[edges[ei, 0]]
    a, e1, e2 = tri[fi, 0], tri[fi, 1] - tri[fi, 0], tri[fi, 2] - tri[fi, 0]
    h = np.cross(d, e2)
    det = (e1 * h).sum(1)
    inv = 1.0 / np.where(np.abs(det) > 1e-18, det, np.inf)
    s = p0 - a
    u = (s * h).sum(1) * inv
    q = np.cross(s, e1)
    v, t = (d * q).sum(1) * inv, (e2 * q).sum(1) * inv
    hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1) & (inv != 0)
    return set(zip(ei[hit].tolist(), fi[hit].tolist()))


def test_neutral_is_identity_and_no_parameters(rig, verts):
    assert list(rig.parameters()) == [] and rig.num_controls == 12
    torch.testing.assert_close(rig.deform(verts, torch.zeros(12, dtype=torch.float64)), verts)
    template = load_template()
    torch.testing.assert_close(rig.landmarks(verts, torch.zeros(12, dtype=torch.float64)),
                               torch.tensor(template.landmarks(), dtype=torch.float64), atol=1e-7, rtol=0)


def test_shapes_and_broadcasting(rig, verts):
    controls = torch.rand(5, 12, dtype=torch.float64)
    out = rig.deform(verts, controls)
    assert out.shape == (5, len(verts), 3)
    torch.testing.assert_close(out[3], rig.deform(verts, controls[3]))
    batched = rig.deform(verts.expand(2, 5, -1, -1), controls)
    torch.testing.assert_close(batched[1], out)
    assert rig.landmarks(verts, controls, torch.zeros(5, 2, dtype=torch.float64)).shape == (5, 478, 3)
    torch.testing.assert_close(rig.landmarks(verts[:468], controls), rig.landmarks(verts, controls))
    with pytest.raises(ValueError, match="controls must be"):
        rig.deform(verts, torch.zeros(11, dtype=torch.float64))
    with pytest.raises(ValueError, match="vertices must be"):
        rig.deform(verts[:100], controls)


def test_jaw_opens_the_mouth_about_the_hinge(rig, verts):
    opened = rig.deform(verts, control("jaw_open"))
    gap = lambda v: float(v[13, 1] - v[14, 1])  # noqa: E731  upper minus lower inner lip
    assert gap(opened) - gap(verts) > 0.025  # the mouth opens by more than 2.5 cm
    assert float(verts[152, 1] - opened[152, 1]) > 0.015  # the chin drops
    still = [13, 0, 1, 4, 168, 10, 33, 263, 234, 454]  # upper lip, nose, eyes, forehead, face sides
    assert (opened[still] - verts[still]).norm(dim=-1).max() < 0.5 * MM
    pocket = np.flatnonzero(load_template().region_vertex_mask("mouth_interior"))
    pocket = torch.tensor(pocket[pocket >= 468])
    drop = verts[pocket, 1] - opened[pocket, 1]
    assert drop.max() > 0.02 and drop.min() < 1 * MM  # the lower pocket moves with the jaw, the upper stays
    # the mouth opening seen from the front grows a lot, so an open mouth shows the inside
    ring = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
    area = lambda v: 0.5 * abs(float(np.cross(v[ring, :2].numpy(), np.roll(v[ring, :2].numpy(), -1, 0)).sum()))  # noqa: E731
    assert area(opened) > 3 * area(verts)


def test_lip_and_brow_controls_move_where_and_how_they_should(rig, verts):
    smile = motion(rig, verts, "smile_left")
    assert smile[291, 1] > 4 * MM and smile[291, 0] > 2 * MM and smile[291, 2] < -2 * MM  # up, out, back
    assert smile[61].norm() < 0.3 * MM  # the other corner stays
    pucker = motion(rig, verts, "lip_pucker")
    assert pucker[[0, 13, 14, 17], 2].min() > 5 * MM  # lips forward
    assert pucker[291, 0] < -2 * MM and pucker[61, 0] > 2 * MM  # corners inward
    stretch = motion(rig, verts, "lip_stretch")
    assert stretch[291, 0] > 4 * MM and stretch[61, 0] < -4 * MM
    raise_upper, depress_lower = motion(rig, verts, "upper_lip_raise"), motion(rig, verts, "lower_lip_depress")
    assert raise_upper[0, 1] > 3 * MM and raise_upper[17].norm() < 0.5 * MM
    assert depress_lower[17, 1] < -3 * MM and depress_lower[0].norm() < 0.5 * MM
    brow = motion(rig, verts, "brow_raise_left")
    assert brow[[334, 296, 282], 1].min() > 5 * MM and brow[[105, 66, 52]].norm(dim=-1).max() < 0.5 * MM
    assert brow[386].norm() < 2 * MM  # the lid margin barely moves
    frown = motion(rig, verts, "brow_frown")
    assert frown[[285, 55], 1].max() < -2 * MM and frown[285, 0] < -2 * MM and frown[55, 0] > 2 * MM
    for name in CONTROL_NAMES:  # every control is clearly visible and none is wild
        assert 3 * MM < motion(rig, verts, name).norm(dim=-1).max() < 0.05, name


def test_blink_closes_one_eye(rig, verts):
    upper, lower = [386, 385, 387, 384, 388], [374, 380, 373, 381, 390]
    half, closed = rig.deform(verts, control("blink_left", 0.5)), rig.deform(verts, control("blink_left"))
    gap = lambda v: (v[upper] - v[lower]).norm(dim=-1).max()  # noqa: E731
    assert gap(verts) > 8 * MM and gap(closed) < 1 * MM
    assert 0.4 * gap(verts) < gap(half) < 0.6 * gap(verts)
    assert (closed[[159, 145, 33, 133]] - verts[[159, 145, 33, 133]]).norm(dim=-1).max() < 1e-9  # right eye open


def test_left_and_right_controls_mirror_each_other(rig, verts):
    partner = torch.tensor(mirror_partners(verts[:468].numpy()))
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    for left, right in (("smile_left", "smile_right"), ("brow_raise_left", "brow_raise_right"),
                        ("blink_left", "blink_right")):
        torch.testing.assert_close(motion(rig, verts, left)[:468][partner] * flip, motion(rig, verts, right)[:468],
                                   atol=2e-5, rtol=0)
    for name in ("jaw_open", "lip_pucker", "lip_stretch", "brow_frown"):
        move = motion(rig, verts, name)[:468]
        torch.testing.assert_close(move[partner] * flip, move, atol=2e-5, rtol=0)


def test_amplitudes_scale_with_the_face(rig, verts):
    controls = torch.rand(3, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gaze = torch.tensor([0.2, -0.1], dtype=torch.float64)
    small = rig.landmarks(verts, controls, gaze)
    torch.testing.assert_close(rig.landmarks(1.25 * verts, controls, gaze), 1.25 * small)
    torch.testing.assert_close(rig.face_scale(1.25 * verts), torch.full((1, 1), 1.25, dtype=torch.float64))


def test_no_self_intersections_at_full_controls(rig, verts):
    faces = load_template().faces
    gen = torch.Generator().manual_seed(0)
    # The template itself has a few near-contacts (< 0.3 mm) deep in the mouth pocket and eye caps;
    # only crossings that are not among them count.
    known = set()
    for _ in range(4):
        known |= self_intersections((verts + 3e-4 * torch.randn(verts.shape, generator=gen, dtype=torch.float64)).numpy(), faces)
    cases = [control(name) for name in CONTROL_NAMES] + [c for c in torch.rand(6, 12, generator=gen, dtype=torch.float64)]
    for controls in cases:
        crossings = self_intersections(rig.deform(verts, controls).numpy(), faces) - known
        assert not crossings, f"{controls.tolist()}: {len(crossings)} new self-intersections"


def test_gaze_turns_the_iris_about_the_eyeball(rig, verts):
    rest = rig.iris(verts, None)
    torch.testing.assert_close(rig.iris(verts, torch.zeros(2, dtype=torch.float64)), rest)
    right = rig.iris(verts, torch.tensor([0.3, 0.0], dtype=torch.float64)) - rest
    down = rig.iris(verts, torch.tensor([0.0, 0.3], dtype=torch.float64)) - rest
    assert right[:, 0].min() > 2 * MM and right[:, 1].abs().max() < 0.5 * MM  # toward the subject's left, +x
    assert down[:, 1].max() < -2 * MM
    turned = rig.iris(verts, torch.tensor([0.4, -0.2], dtype=torch.float64))
    for eye in (slice(0, 5), slice(5, 10)):  # each eye turns rigidly
        torch.testing.assert_close(torch.cdist(turned[eye], turned[eye]), torch.cdist(rest[eye], rest[eye]))
    closed = rig.landmarks(verts, control("blink_left"))[468:]
    torch.testing.assert_close(closed, rest)  # the eyeballs do not move with the lids


def test_pose_rigid_and_neck_blend(rig, verts):
    pose = torch.tensor([0.3, -0.5, 0.2, 0.01, -0.02, 0.03], dtype=torch.float64)
    transform = MotionLatent(torch.zeros(12, dtype=torch.float64), pose).head_transform()
    rigid = verts @ transform[:3, :3].T + transform[:3, 3]
    torch.testing.assert_close(rig.pose(verts, pose, neck_blend=False), rigid)
    blended = rig.pose(verts, pose)
    head = verts[:, 1] > -0.1
    torch.testing.assert_close(blended[head], rigid[head])
    base = verts[:, 1] < -0.197
    torch.testing.assert_close(blended[base], verts[base] + pose[3:])  # the neck's base only translates
    # the neck bends without folding, and without tearing at a moderate nod
    faces = load_template().faces
    for rotation in ([0.4, 0.0, 0.0], [-0.4, 0.0, 0.0], [0.0, 0.7, 0.0], [0.0, 0.0, 0.4], pose[:3].tolist()):
        bent = rig.pose(verts, torch.tensor(rotation + [0.0, 0.0, 0.0], dtype=torch.float64))
        assert not self_intersections(bent.numpy(), faces), rotation
    edges = torch.tensor(faces)
    length = lambda v: (v[edges] - v[edges.roll(1, 1)]).norm(dim=-1)  # noqa: E731
    nod = rig.pose(verts, torch.tensor([0.25, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert (length(nod) / length(verts)).max() < 1.5
    batch = rig.pose(verts, pose.expand(4, 6))
    assert batch.shape == (4, len(verts), 3)
    torch.testing.assert_close(batch[2], blended)


def test_gradients_flow_to_controls_vertices_and_gaze(rig, verts):
    controls = torch.full((12,), 0.3, dtype=torch.float64, requires_grad=True)
    gaze = torch.tensor([0.1, 0.1], dtype=torch.float64, requires_grad=True)
    shaped = verts.clone().requires_grad_(True)
    target = torch.randn(478, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (rig.landmarks(shaped, controls, gaze) * target).sum().backward()
    assert torch.isfinite(controls.grad).all() and (controls.grad.abs() > 0).all()
    assert (gaze.grad.abs() > 0).all() and shaped.grad[:468].abs().sum() > 0


def test_latent_convention():
    controls = torch.rand(7, 12)
    pose, gaze = torch.randn(7, 6), torch.randn(7, 2)
    latent = latent_from_controls(controls, pose, dim=20, gaze=gaze)
    assert latent.dyn.shape == (7, 20) and (latent.dyn[:, 12:] == 0).all()
    torch.testing.assert_close(controls_from_latent(latent), controls)
    torch.testing.assert_close(latent.blink, controls[:, [10, 11]])
    with pytest.raises(ValueError, match="D=8"):
        controls_from_latent(MotionLatent.zeros(3, dim=8))
    with pytest.raises(ValueError, match="dim=8"):
        latent_from_controls(controls, pose, dim=8)
    assert math.isclose(float(latent_from_controls(controls[0], torch.zeros(6), 12).pose.abs().sum()), 0.0)
