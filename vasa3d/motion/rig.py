"""``ExpressionRig``: a procedural, training-free expression rig on the head template.

Twelve semantic controls (``CONTROL_NAMES``), each roughly in [0, 1] with 0 = neutral, deform
the template (or an identity-shaped copy of it, template frame, metres):

- ``jaw_open`` rotates the lower face (lower lip, chin, jaw line, the lower half of the mouth
  pocket; harmonic weights fade over the cheeks and the top of the neck) about a horizontal axis
  through the jaw hinges, up to ``JAW_MAX_ANGLE`` at 1.0, with a small forward glide;
- ``smile_*``, ``lip_pucker``, ``lip_stretch``, ``upper_lip_raise``, ``lower_lip_depress``,
  ``brow_raise_*``, ``brow_frown`` add smooth displacement fields (a few mm to ~1 cm at 1.0);
- ``blink_*`` bring the upper-lid contour down onto the lower lid (1.0 = closed); the skin above
  follows, the eye cap (the eyeball) stays, sinking 2 mm, so the closed lid covers it.
The mouth pocket (and the eye caps, under the fields) follow their rim, so an open mouth shows its
inside. Amplitudes scale with the face (inter-ocular distance of the vertices vs the template's).
Gaze ``(yaw, pitch)`` in radians turns the iris points about each eyeball centre: yaw > 0 looks
toward the subject's left (+x), pitch > 0 looks down, as the head pose does.

Latent convention (``controls_from_latent`` / ``latent_from_controls``): the first K = 12
channels of ``MotionLatent.dyn`` are these controls, in ``CONTROL_NAMES`` order; channels beyond
K are free residual channels for what the rig cannot express (zero from the built-in teacher).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from mediapipe.python.solutions import face_mesh_connections as fmc
from scipy.spatial import cKDTree
from torch import Tensor, nn

from vasa3d.face.template import HeadTemplate, load_template
from vasa3d.motion.latent import MotionLatent, axis_angle_to_matrix

CONTROL_NAMES: tuple[str, ...] = (
    "jaw_open", "smile_left", "smile_right", "lip_pucker", "lip_stretch", "upper_lip_raise",
    "lower_lip_depress", "brow_raise_left", "brow_raise_right", "brow_frown", "blink_left", "blink_right",
)
NUM_CONTROLS = len(CONTROL_NAMES)
JAW, BLINK_LEFT, BLINK_RIGHT = 0, 10, 11
LINEAR_CONTROLS: tuple[int, ...] = tuple(range(1, 10))  # controls that add a fixed displacement field
# Per-control bounds the motion encoder clamps to (negative = the opposite motion, e.g. eyes wider).
CONTROL_BOUNDS: tuple[tuple[float, float], ...] = ((-0.3, 1.5),) + ((-0.5, 1.5),) * 9 + ((-0.5, 1.0),) * 2
JAW_MAX_ANGLE = math.radians(20.0)  # jaw rotation at jaw_open = 1
JAW_GLIDE_M = np.array([0.0, -0.004, 0.010])  # condyle glide at jaw_open = 1: down and forward
HINGE_FROM_ORIGIN_M = np.array([0.0, -0.014, 0.004])  # jaw hinge axis point, template frame
EYEBALL_RADIUS_M = 0.012
LID_OVERLAP_M = np.array([0.0, 0.0, 0.0007])  # closed upper lid: this far in front of the lower lid
EYE_CAP_SINK_M = 0.002  # eye caps sink this far behind the lids when closed
NECK_BLEND_Y_M = (-0.105, -0.195)  # neck rotation weight 1 above the first height, 0 below the second
EYE_CORNERS = ((33, 133), (362, 263))  # subject's right, left eye corners
OVAL_SIDES = (234, 454)


# ---------------------------------------------------------------------------- template analysis
def _adjacency(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_vertices,) * 2).tocsr()
    return ((adj + adj.T) > 0).astype(np.float64).tocsr()


def _harmonic(adj: sp.csr_matrix, fixed: np.ndarray, values: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Values [len(free), C] on ``free`` vertices minimising the graph Dirichlet energy, ``values`` [len(fixed), C]."""
    lap = sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj
    lap_ff = lap[free][:, free].tocsc()
    rhs = -(lap[free][:, fixed] @ values)
    return np.asarray(spla.splu(lap_ff).solve(np.asarray(rhs, dtype=np.float64)))


def _neighbourhood(adj: sp.csr_matrix, seeds: np.ndarray, rings: int) -> np.ndarray:
    mask = np.zeros(adj.shape[0], dtype=bool)
    mask[seeds] = True
    for _ in range(rings):
        mask |= np.asarray(adj[mask].sum(axis=0)).ravel() > 0
    return np.flatnonzero(mask)


def _ring_follow_map(adj: sp.csr_matrix, cap: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """``[len(cap), V]``: how each cap vertex follows the motion of the cap's rim.

    Ring j (1 = next to the rim) blends the mean motion of its neighbours in ring j - 1 (weight
    1 - (j - 1) / 2) with the best affine fit of the rim's motion, evaluated at the vertex: the walls
    near the rim follow the lips or lids closely, the deep part of the pocket moves smoothly as a
    whole, which keeps its thin, folded corners from folding further.
    """
    num = len(verts)
    in_cap = np.zeros(num, dtype=bool)
    in_cap[cap] = True
    layer = [int(v) for v in cap if (~in_cap[adj[v].indices]).any()]
    rim = np.array(sorted({int(n) for v in layer for n in adj[v].indices if not in_cap[n]}))
    fit = np.linalg.pinv(np.concatenate([verts[rim], np.ones((len(rim), 1))], axis=1))  # [4, R]
    rows = {int(v): np.eye(len(rim))[i] for i, v in enumerate(rim)}  # rows over the rim vertices
    outer_ring, depth = set(rim.tolist()), 1
    while layer:
        follow = max(0.0, 1.0 - (depth - 1) / 2)
        for v in layer:
            outer = [int(n) for n in adj[v].indices if n in outer_ring]
            rows[v] = follow * np.mean([rows[n] for n in outer], axis=0) + (1.0 - follow) * (np.append(verts[v], 1.0) @ fit)
        outer_ring, depth = set(layer), depth + 1
        layer = sorted({int(n) for v in layer for n in adj[v].indices if in_cap[n] and n not in rows})
    if not all(int(v) in rows for v in cap):
        raise RuntimeError("a template cap is not connected to its rim")
    out = np.zeros((len(cap), num))
    out[:, rim] = np.stack([rows[int(v)] for v in cap])
    return out


def _contour_chains(connections: frozenset, vertices: np.ndarray) -> tuple[list[int], list[int], tuple[int, int]]:
    """Split a closed mediapipe contour into (upper chain, lower chain, (corner at min x, corner at max x)).

    Both chains run from the min-x corner to the max-x corner, corners excluded.
    """
    neighbours: dict[int, list[int]] = {}
    for a, b in connections:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    ids = np.array(sorted(neighbours))
    start, end = int(ids[vertices[ids, 0].argmin()]), int(ids[vertices[ids, 0].argmax()])
    chains = []
    for first in neighbours[start]:
        chain, previous = [first], start
        while chain[-1] != end:
            step = next(n for n in neighbours[chain[-1]] if n != previous)
            previous = chain[-1]
            chain.append(step)
        chains.append(chain[:-1])
    upper, lower = sorted(chains, key=lambda c: -vertices[c, 1].mean())
    return upper, lower, (start, end)


def _plateau(u: np.ndarray, lo: float, hi: float, sigma_lo: float, sigma_hi: float) -> np.ndarray:
    """1 on [lo, hi], Gaussian falloff outside (sigmas on each side)."""
    below, above = np.clip(lo - u, 0, None) / sigma_lo, np.clip(u - hi, 0, None) / sigma_hi
    return np.exp(-0.5 * (below**2 + above**2))


def _gauss(points: np.ndarray, centre: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (((points - centre) / sigma) ** 2).sum(axis=-1))


def _build_rig(template: HeadTemplate) -> dict[str, np.ndarray]:
    """The rig's fixed arrays, from the template: ``fields [9, V, 3]`` (metres at control 1),
    ``jaw_weights [V]``, ``neck_weights [V]``, per eye ``blink_* [V, n]`` (harmonic influence of the n
    upper-lid points), ``blink_sink_* [V, 3]``, ``lid_upper_*`` / ``lid_lower_* [n]`` (paired lid points),
    ``eye_centre_from_anchor [2, 3]``, ``iris_from_centre [2, 5, 3]`` (right eye first),
    ``hinge_from_sides [3]`` and ``interocular []`` (template metres)."""
    verts = template.vertices.astype(np.float64)
    num = len(verts)
    adj = _adjacency(template.faces, num)
    n_lm = template.num_landmark_vertices
    x, y, z = verts.T
    out: dict[str, np.ndarray] = {}
    partner = cKDTree(verts).query(verts * [-1.0, 1.0, 1.0])[1]  # mirror image (exact on the face)

    # --- lips: upper / lower / corners, split by the inner lip contour's mid-line
    rim = set(np.flatnonzero(template.region_vertex_mask("mouth_interior")[:n_lm]).tolist())  # inner lip contour
    inner_contour = frozenset(e for e in fmc.FACEMESH_LIPS if e[0] in rim and e[1] in rim)
    inner_upper, inner_lower, inner_corners = _contour_chains(inner_contour, verts)
    lips = np.flatnonzero(template.region_vertex_mask("lips")[:n_lm])
    upper_x, upper_y = verts[[inner_corners[0], *inner_upper, inner_corners[1]]][:, :2].T
    lower_x, lower_y = verts[[inner_corners[0], *inner_lower, inner_corners[1]]][:, :2].T
    mid_y = 0.5 * (np.interp(x[lips], upper_x, upper_y) + np.interp(x[lips], lower_x, lower_y))
    corner_x = np.abs(verts[list(inner_corners), 0]).min() - 1e-4
    is_corner = np.abs(x[lips]) >= corner_x
    lower_lip = lips[~is_corner & (y[lips] < mid_y)]
    upper_lip = lips[~is_corner & (y[lips] >= mid_y)]

    # --- caps (eye caps, mouth pocket) follow their rim ring by ring (see _ring_follow_map)
    cap_rows, cap_maps = [], []
    for name in ("left_eye", "right_eye", "mouth_interior"):
        cap = np.flatnonzero(template.region_vertex_mask(name))
        cap_rows.append(cap[cap >= n_lm])
        cap_maps.append(_ring_follow_map(adj, cap[cap >= n_lm], verts))

    def follow_caps(field: np.ndarray) -> np.ndarray:
        field = field.copy()
        for rows, cap_map in zip(cap_rows, cap_maps):
            field[rows] = cap_map @ field
        return field

    # --- jaw weights: harmonic between the moving lower face (1) and the fixed upper head (0)
    face = np.arange(n_lm)
    ears = np.flatnonzero(template.region_vertex_mask("ears"))
    nose = np.flatnonzero(template.region_vertex_mask("nose"))
    mouth_corner_y = verts[[61, 291], 1].mean()
    # Lip vertices near the corners stay free so the corners blend smoothly into the cheeks.
    central = np.abs(x) < 0.7 * corner_x
    ones = np.union1d(lower_lip[central[lower_lip]], face[(y[face] < mouth_corner_y - 0.03)])
    zeros = np.union1d(np.union1d(upper_lip[central[upper_lip]], nose), np.union1d(ears, np.flatnonzero(
        (y > mouth_corner_y + 0.02) | (z < -0.02) | (y < NECK_BLEND_Y_M[0] - 0.045))))
    zeros = np.setdiff1d(zeros, ones)
    fixed = np.concatenate([ones, zeros])
    free = np.setdiff1d(np.arange(num), fixed)
    jaw = np.zeros(num)
    jaw[ones] = 1.0
    jaw[free] = _harmonic(adj, fixed, jaw[fixed, None], free)[:, 0]
    jaw = 0.5 * (jaw + jaw[partner])  # mediapipe's triangulation is not quite mirror-symmetric
    out["jaw_weights"] = np.clip(follow_caps(jaw), 0.0, 1.0)  # the upper pocket stays, the lower one opens

    # --- linear displacement fields, [9, V, 3] for controls 1..9, template metres at control = 1
    fields = np.zeros((len(LINEAR_CONTROLS), num, 3))
    corner = {+1: verts[291], -1: verts[61]}
    upper_mask, lower_mask = 1.0 - out["jaw_weights"], out["jaw_weights"]
    for k, side in ((0, +1), (1, -1)):  # smiles: corners up, back and outward; the cheek rises a little
        cheek = 0.5 * (corner[side] + verts[263 if side > 0 else 33])
        fields[k] = _gauss(verts, corner[side], 0.013)[:, None] * [0.004 * side, 0.007, -0.004]
        fields[k] += _gauss(verts, cheek + [0.0, 0.0, 0.01], 0.015)[:, None] * [0.0, 0.003, 0.001]
    lip_ids = np.concatenate([lips, list(inner_corners)])
    mouth = verts[lip_ids].mean(axis=0)
    lip_lo, lip_hi = y[lip_ids].min(), y[lip_ids].max()
    pucker = np.exp(-0.5 * ((x - mouth[0]) / 0.03) ** 2) * _plateau(y, lip_lo, lip_hi, 0.01, 0.006)
    pucker *= _plateau(z, mouth[2] - 0.03, 1.0, 0.015, 1.0)
    fields[2] = pucker[:, None] * np.stack([-0.35 * (x - mouth[0]), np.zeros(num), np.full(num, 0.009)], 1)
    for side in (+1, -1):  # stretch: corners outward, a little down and back
        fields[3] += _gauss(verts, corner[side], 0.012)[:, None] * [0.008 * side, -0.002, -0.003]
    upper_centre = np.array([0.0, lip_hi - 0.002, mouth[2]])
    lower_centre = np.array([0.0, lip_lo + 0.004, mouth[2]])
    fields[4] = (_gauss(verts, upper_centre, np.array([0.022, 0.01, 1.0])) * upper_mask)[:, None] * [0, 0.005, 0.001]
    fields[5] = (_gauss(verts, lower_centre, np.array([0.022, 0.01, 1.0])) * lower_mask)[:, None] * [0, -0.005, 0.001]
    front = _plateau(z, 0.05, 1.0, 0.02, 1.0)
    for k, (brow, side) in enumerate(((fmc.FACEMESH_LEFT_EYEBROW, +1), (fmc.FACEMESH_RIGHT_EYEBROW, -1))):
        ids = np.array(sorted({v for e in brow for v in e}))
        bx, by = np.sort(side * x[ids]), y[ids]
        lateral = _plateau(side * x, bx[0] + 0.004, bx[-1], 0.012, 0.012)
        vertical = _plateau(y, by.min(), by.max(), 0.003, 0.035)
        fields[6 + k] = (lateral * vertical * front)[:, None] * [0.0, 0.007, 0.0]
        inner = ids[np.argsort(np.abs(x[ids]))[:2]]
        frown = _gauss(verts, verts[inner].mean(axis=0), np.array([0.012, 0.012, 1.0]))
        frown *= _plateau(y, by.min(), 1.0, 0.004, 1.0) * front
        fields[8] += frown[:, None] * [-0.0035 * side, -0.004, 0.001]
    out["fields"] = np.stack([follow_caps(f) for f in fields])

    # --- blinks: the upper-lid contour goes onto the lower lid, the skin above follows harmonically;
    # the eye cap (the eyeball) stays, sinking a little, so the lid closes in front of it
    for name, contour in (("left", fmc.FACEMESH_LEFT_EYE), ("right", fmc.FACEMESH_RIGHT_EYE)):
        upper, lower, corners = _contour_chains(contour, verts)
        if len(upper) != len(lower):
            raise RuntimeError(f"the {name} eye contour has {len(upper)} upper and {len(lower)} lower lid points")
        cap = np.flatnonzero(template.region_vertex_mask(f"{name}_eye"))
        brow = np.array(sorted({v for e in getattr(fmc, f"FACEMESH_{name.upper()}_EYEBROW") for v in e}))
        face_adj = adj[:n_lm][:, :n_lm]
        region = _neighbourhood(face_adj, np.array(upper), 3)
        outside = np.setdiff1d(np.arange(n_lm), region)
        boundary = region[np.asarray(face_adj[region][:, outside].sum(axis=1)).ravel() > 0]
        fixed_zero = np.union1d(np.union1d(boundary, lower + list(corners)), np.intersect1d(region, brow))
        fixed_zero = np.setdiff1d(fixed_zero, upper)
        fixed = np.concatenate([upper, fixed_zero])
        values = np.concatenate([np.eye(len(upper)), np.zeros((len(fixed_zero), len(upper)))])
        free = np.setdiff1d(region, fixed)
        influence = np.zeros((num, len(upper)))
        influence[upper] = np.eye(len(upper))
        influence[free] = _harmonic(adj, fixed, values, free)
        out[f"blink_{name}"] = influence
        sink = np.zeros((num, 3))
        sink[cap[cap >= n_lm], 2] = -EYE_CAP_SINK_M
        out[f"blink_sink_{name}"] = sink
        out[f"lid_upper_{name}"], out[f"lid_lower_{name}"] = np.array(upper), np.array(lower)
    # Symmetrise the two lids' influences (the face triangulation is not quite mirror-symmetric).
    order = [list(out["lid_upper_right"]).index(partner[v]) for v in out["lid_upper_left"]]
    left = 0.5 * (out["blink_left"] + out["blink_right"][partner][:, order])
    out["blink_left"], out["blink_right"] = left, left[partner][:, np.argsort(order)]

    # --- eyes, hinge and neck
    iris = template.iris_points.astype(np.float64)
    eye_anchor = np.stack([verts[list(c)].mean(axis=0) for c in EYE_CORNERS])  # right, left
    iris_by_eye = iris.reshape(2, 5, 3)  # the subject's right iris (x < 0) first, centre first
    centres = iris_by_eye[:, 0] - [0.0, 0.0, EYEBALL_RADIUS_M]
    out["eye_centre_from_anchor"] = centres - eye_anchor
    out["iris_from_centre"] = iris_by_eye - centres[:, None]
    out["hinge_from_sides"] = HINGE_FROM_ORIGIN_M - verts[list(OVAL_SIDES)].mean(axis=0)
    out["interocular"] = np.array(np.linalg.norm(eye_anchor[1] - eye_anchor[0]))
    top, base = NECK_BLEND_Y_M
    t = np.clip((y - base) / (top - base), 0.0, 1.0)
    out["neck_weights"] = t * t * (3 - 2 * t)
    return out


# ---------------------------------------------------------------------------- the rig
def _rotation_x(angle: Tensor) -> Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], -1).reshape(angle.shape + (3, 3))


def gaze_rotation(gaze: Tensor) -> Tensor:
    """Eye rotations ``[..., 3, 3]`` from gaze ``[..., 2]`` (yaw, pitch; radians): ``Ry(yaw) @ Rx(pitch)``."""
    yaw, pitch = gaze.unbind(-1)
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    zero = torch.zeros_like(yaw)  # written out: +z turns toward +x with yaw and toward -y with pitch
    return torch.stack([cy, sy * sp, sy * cp, zero, cp, -sp, -sy, cy * sp, cy * cp], -1).reshape(yaw.shape + (3, 3))


class ExpressionRig(nn.Module):
    """Procedural expression rig on the head template (see the module docstring); buffers only.

    Args:
        template: the head template; None uses the packaged one.
    """

    def __init__(self, template: HeadTemplate | None = None) -> None:
        super().__init__()
        template = load_template() if template is None else template
        arrays = _build_rig(template)
        self.num_controls: int = NUM_CONTROLS
        self.num_vertices: int = len(template.vertices)
        self.num_landmark_vertices: int = template.num_landmark_vertices

        arrays.update(template_vertices=template.vertices, jaw_glide=JAW_GLIDE_M, lid_overlap=LID_OVERLAP_M,
                      neck_ids=np.flatnonzero(arrays["neck_weights"] < 1.0))
        for name, value in arrays.items():  # derived from the template: not saved with a checkpoint
            dtype = torch.int64 if name.startswith(("lid_upper", "lid_lower", "neck_ids")) else torch.float32
            self.register_buffer(name, torch.tensor(np.array(value), dtype=dtype), persistent=False)

    # ------------------------------------------------------------ geometry of a face
    def _check(self, vertices: Tensor, what: str, rows: tuple[int, ...]) -> None:
        if vertices.dim() < 2 or vertices.shape[-1] != 3 or vertices.shape[-2] not in rows:
            raise ValueError(f"ExpressionRig.{what}: vertices must be [..., {' or '.join(map(str, rows))}, 3], "
                             f"got {tuple(vertices.shape)}")

    def face_scale(self, vertices: Tensor) -> Tensor:
        """``[..., 1, 1]`` inter-ocular distance of ``vertices [..., N>=468, 3]`` over the template's."""
        right, left = (vertices[..., list(c), :].mean(dim=-2) for c in EYE_CORNERS)
        return ((left - right).norm(dim=-1) / self.interocular)[..., None, None]

    def hinge(self, vertices: Tensor) -> Tensor:
        """``[..., 1, 3]`` a point on the jaw hinge axis (the axis is parallel to template x)."""
        sides = vertices[..., list(OVAL_SIDES), :].mean(dim=-2, keepdim=True)
        return sides + self.face_scale(vertices) * self.hinge_from_sides

    def eyeball_centres(self, vertices: Tensor) -> Tensor:
        """``[..., 2, 3]`` eyeball centres (subject's right, left), behind the eye caps."""
        anchors = torch.stack([vertices[..., list(c), :].mean(dim=-2) for c in EYE_CORNERS], dim=-2)
        return anchors + self.face_scale(vertices) * self.eye_centre_from_anchor

    # ------------------------------------------------------------ deformation
    def deform(self, vertices: Tensor, controls: Tensor) -> Tensor:
        """Apply the expression ``controls [..., K]`` to ``vertices [..., V, 3]`` (template frame, metres).

        ``vertices`` may be identity-shaped (template + offsets); leading dimensions broadcast.
        Returns the deformed vertices ``[..., V, 3]``; differentiable in both inputs.
        """
        self._check(vertices, "deform", (self.num_vertices,))
        return self._deform(vertices, controls)

    def _deform(self, vertices: Tensor, controls: Tensor) -> Tensor:
        """``deform`` on the first N rows of the template's vertices (N = V, or 468 for the landmarks)."""
        if controls.shape[-1] != self.num_controls:
            raise ValueError(f"ExpressionRig: controls must be [..., {self.num_controls}] ({', '.join(CONTROL_NAMES)}), "
                             f"got {tuple(controls.shape)}")
        controls = controls.to(vertices.dtype)
        fields = self.fields[:, : vertices.shape[-2]]
        offsets = torch.einsum("...k,kvc->...vc", controls[..., list(LINEAR_CONTROLS)], fields) * self.face_scale(vertices)
        lids = torch.einsum("...e,...evc->...vc", controls[..., [BLINK_LEFT, BLINK_RIGHT]], self.blink_motion(vertices))
        return self.rotate_jaw(vertices + offsets + lids, vertices, controls[..., JAW] * JAW_MAX_ANGLE)

    def blink_motion(self, vertices: Tensor) -> Tensor:
        """``[..., 2, N, 3]`` vertex motion that closes the (left, right) eye of ``vertices [..., N, 3]``."""
        scale = self.face_scale(vertices)
        motions = []
        for eye in ("left", "right"):
            lid_gap = vertices[..., getattr(self, f"lid_lower_{eye}"), :] - vertices[..., getattr(self, f"lid_upper_{eye}"), :]
            motion = getattr(self, f"blink_{eye}")[: vertices.shape[-2]] @ (lid_gap + scale * self.lid_overlap)
            motions.append(motion + scale * getattr(self, f"blink_sink_{eye}")[: vertices.shape[-2]])
        return torch.stack(motions, dim=-3)

    def rotate_jaw(self, moved: Tensor, vertices: Tensor, angle: Tensor) -> Tensor:
        """Open the jaw of ``moved [..., N, 3]`` by ``angle [...]`` (radians) about the hinge of ``vertices``
        (jaw-weighted, with the condyle's glide); ``angle = jaw_open * JAW_MAX_ANGLE``."""
        hinge = self.hinge(vertices)
        glide = (angle / JAW_MAX_ANGLE)[..., None, None] * self.face_scale(vertices) * self.jaw_glide
        jawed = (moved - hinge) @ _rotation_x(angle).transpose(-1, -2) + hinge + glide
        return moved + self.jaw_weights[: moved.shape[-2], None] * (jawed - moved)

    def iris(self, vertices: Tensor, gaze: Tensor | None = None) -> Tensor:
        """``[..., 10, 3]`` iris landmarks (mediapipe 468..477) of ``vertices [..., N>=468, 3]`` turned by
        ``gaze [..., 2]`` (yaw, pitch; radians) about the eyeball centres."""
        offsets = self.face_scale(vertices)[..., None] * self.iris_from_centre  # [..., 2, 5, 3]
        if gaze is not None:
            offsets = offsets @ gaze_rotation(gaze.to(vertices.dtype))[..., None, :, :].transpose(-1, -2)
        points = self.eyeball_centres(vertices)[..., None, :] + offsets
        return points.reshape(points.shape[:-3] + (10, 3))

    def landmarks(self, vertices: Tensor, controls: Tensor, gaze: Tensor | None = None) -> Tensor:
        """``[..., 478, 3]`` mediapipe landmarks of the deformed face (face vertices, then the iris).

        ``vertices`` is ``[..., V, 3]`` or just the landmark vertices ``[..., 468, 3]``.
        """
        self._check(vertices, "landmarks", (self.num_vertices, self.num_landmark_vertices))
        face = self._deform(vertices[..., : self.num_landmark_vertices, :], controls)
        return torch.cat([face, self.iris(face, gaze)], dim=-2)

    def pose(self, vertices: Tensor, pose: Tensor, neck_blend: bool = True, neck_weights: Tensor | None = None) -> Tensor:
        """Pose ``vertices [..., V, 3]`` with ``pose [..., 6]`` (``MotionLatent.pose``: axis-angle about the
        head centre, the template origin, then a translation in metres).

        With ``neck_blend`` the neck turns by a fraction of the rotation that falls smoothly to 0 at its
        base, so the neck bends instead of the whole body turning; the translation moves everything.
        ``neck_weights [n]`` overrides those fractions for the vertices ``neck_ids``.
        """
        self._check(vertices, "pose", (self.num_vertices,))
        if pose.shape[-1] != 6:
            raise ValueError(f"ExpressionRig.pose: pose must be [..., 6] (axis-angle + translation), got {tuple(pose.shape)}")
        pose = pose.to(vertices.dtype)
        rotvec, translation = pose[..., :3], pose[..., None, 3:]
        posed = vertices @ axis_angle_to_matrix(rotvec).transpose(-1, -2) + translation
        if not neck_blend:
            return posed
        ids = self.neck_ids
        weights = self.neck_weights[ids] if neck_weights is None else neck_weights
        partial = axis_angle_to_matrix(rotvec[..., None, :] * weights[:, None])  # [..., n, 3, 3]
        neck = (partial @ vertices[..., ids, :, None]).squeeze(-1) + translation
        posed = posed.expand(torch.broadcast_shapes(posed.shape, neck.shape[:-2] + posed.shape[-2:])).clone()
        posed[..., ids, :] = neck
        return posed


# ---------------------------------------------------------------------------- latent convention
def controls_from_latent(latent: MotionLatent) -> Tensor:
    """``[..., K]`` rig controls: the first K channels of ``latent.dyn`` (see the module docstring)."""
    if latent.dim < NUM_CONTROLS:
        raise ValueError(f"controls_from_latent: MotionLatent.dyn has D={latent.dim} channels, but the rig needs "
                         f"the first {NUM_CONTROLS} ({', '.join(CONTROL_NAMES)}); configure D >= {NUM_CONTROLS}")
    return latent.dyn[..., :NUM_CONTROLS]


def latent_from_controls(controls: Tensor, pose: Tensor, dim: int, gaze: Tensor | None = None) -> MotionLatent:
    """A ``MotionLatent`` with ``dyn [..., dim]`` = controls ``[..., K]`` then zeros, ``pose [..., 6]``,
    optional ``gaze [..., 2]``, and ``blink`` = the two blink controls (left, right)."""
    if controls.shape[-1] != NUM_CONTROLS:
        raise ValueError(f"latent_from_controls: controls must be [..., {NUM_CONTROLS}], got {tuple(controls.shape)}")
    if dim < NUM_CONTROLS:
        raise ValueError(f"latent_from_controls: dim={dim} is smaller than the {NUM_CONTROLS} rig controls; "
                         f"use dim >= {NUM_CONTROLS}")
    batch = torch.broadcast_shapes(controls.shape[:-1], pose.shape[:-1])
    controls = controls.expand(batch + controls.shape[-1:])
    dyn = torch.cat([controls, controls.new_zeros(batch + (dim - NUM_CONTROLS,))], dim=-1)
    blink = controls[..., [BLINK_LEFT, BLINK_RIGHT]]
    gaze = None if gaze is None else gaze.expand(batch + (2,))
    return MotionLatent(dyn, pose.expand(batch + (6,)), gaze, blink)
