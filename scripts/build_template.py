"""Build the head template asset (vasa3d/face/assets/head_template.npz) from scratch, offline.

Face: mediapipe's face mesh on ``skimage.data.astronaut()``, pose removed by fitting
the face's mirror-symmetry plane, symmetrised, scaled to a 0.15 m face width.
Eyes and mouth holes get an eyeball surface and a mouth pocket; a star-shaped shell
(skull, ear bumps, neck with a cap) closes the head, triangulated as the convex hull
of its directions seen from a centre inside the head. Usage:
``python scripts/build_template.py [OUT.npz]``.
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter, defaultdict, deque
from pathlib import Path

import mediapipe as mp
import numpy as np
import skimage.data
from matplotlib.path import Path as Polygon
from mediapipe.python.solutions import face_mesh_connections as fmc
from scipy.interpolate import LinearNDInterpolator
from scipy.optimize import linear_sum_assignment
from scipy.spatial import ConvexHull

from vasa3d.face.template import DEFAULT_TEMPLATE_PATH, HeadTemplate, save_template

FACE_WIDTH_M = 0.15  # distance between landmarks 234 and 454 (the face oval's widest points)
# Template-frame origin relative to the midpoint of landmarks 234/454 (in front of the ears): near the ear canals.
ORIGIN_OFFSET_M = np.array([0.0, -0.005, -0.011])
SHELL_CENTRE_M = np.array([0.0, 0.01, -0.02])  # star centre for the shell, inside the head
SHELL_SPACING_M = 0.0065  # target distance between shell vertices
NECK_AXIS_XZ_M, NECK_RADII_XZ_M, NECK_BOTTOM_Y_M = np.array([0.0, -0.012]), np.array([0.058, 0.054]), -0.20


def detect_astronaut_landmarks() -> np.ndarray:
    """Return mediapipe's 478 landmarks on the astronaut as [478, 3] px, axes x right, y up, z toward the camera."""
    image = skimage.data.astronaut()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        result = mesh.process(image)
    if not result.multi_face_landmarks:
        raise RuntimeError("mediapipe found no face in skimage.data.astronaut(); check the mediapipe install")
    height, width = image.shape[:2]
    points = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
    return np.stack([points[:, 0] * width, -points[:, 1] * height, -points[:, 2] * width], axis=1)


def mirror_pairs(points: np.ndarray, guess: np.ndarray, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Fit the mirror plane of ``points`` [N,3] from a normal ``guess`` [3]; return (partner [N], unit normal)."""
    centre, normal = points.mean(axis=0), guess / np.linalg.norm(guess)
    for _ in range(iterations):
        mirrored = points - 2.0 * ((points - centre) @ normal)[:, None] * normal
        _, partner = linear_sum_assignment(np.linalg.norm(mirrored[:, None] - points[None], axis=-1))
        normal = np.linalg.svd(points - points[partner], full_matrices=False)[2][0]
        normal *= np.sign(normal @ guess)
        centre = (0.5 * (points + points[partner])).mean(axis=0)
    if not np.array_equal(partner[partner], np.arange(len(points))):
        raise RuntimeError("mirror matching is not an involution; the landmarks are too asymmetric")
    return partner, normal


def symmetric_landmarks() -> tuple[np.ndarray, np.ndarray]:
    """Return (face vertices [468,3], iris points [10,3]) in the template frame, metres, symmetric in x."""
    points = detect_astronaut_landmarks()
    face_partner, x_axis = mirror_pairs(points[:468], points[263] - points[33])
    y_axis = np.array([0.0, 1.0, 0.0]) - x_axis[1] * x_axis  # keep the photo's pitch, remove yaw and roll
    y_axis /= np.linalg.norm(y_axis)
    rotation = np.stack([x_axis, y_axis, np.cross(x_axis, y_axis)])
    local = (points - points[:468].mean(axis=0)) @ rotation.T
    iris_partner, _ = mirror_pairs(local[468:], np.array([1.0, 0.0, 0.0]))
    partner = np.concatenate([face_partner, 468 + iris_partner])
    flip = np.array([-1.0, 1.0, 1.0])
    local = 0.5 * (local + local[partner] * flip)  # the plane is x = 0: it passes through the mean
    local *= FACE_WIDTH_M / np.linalg.norm(local[234] - local[454])
    local -= 0.5 * (local[234] + local[454]) + ORIGIN_OFFSET_M
    return local[:468], local[468:]


def face_triangles() -> np.ndarray:
    """Return mediapipe's 852 face triangles [852,3] (3-cliques of the tessellation minus 2 spurious ones)."""
    edges = {tuple(sorted(e)) for e in fmc.FACEMESH_TESSELATION}
    neighbours = defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]})
    edge_use = defaultdict(int)
    for tri in cliques:
        for edge in itertools.combinations(tri, 2):
            edge_use[edge] += 1
    # A spurious clique is a "hole" between three real triangles: each of its edges is then shared by 3 cliques.
    keep = [t for t in cliques if not all(edge_use[e] == 3 for e in itertools.combinations(t, 2))]
    if len(keep) != 852:
        raise RuntimeError(f"expected 852 face triangles from FACEMESH_TESSELATION, got {len(keep)}")
    return np.array(keep, dtype=np.int64)


def orient_consistently(faces: np.ndarray) -> np.ndarray:
    """Flip triangles so every shared edge is traversed in opposite directions (BFS over edge neighbours)."""
    faces = faces.copy()
    by_edge = defaultdict(list)
    for index, tri in enumerate(faces):
        for k in range(3):
            by_edge[frozenset((tri[k], tri[(k + 1) % 3]))].append(index)
    done = np.zeros(len(faces), dtype=bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        done[seed], queue = True, deque([seed])
        while queue:
            tri = faces[queue.popleft()]
            for k in range(3):
                a, b = tri[k], tri[(k + 1) % 3]
                for other in by_edge[frozenset((a, b))]:
                    if done[other]:
                        continue
                    directed = {(faces[other][j], faces[other][(j + 1) % 3]) for j in range(3)}
                    if (a, b) in directed:
                        faces[other] = faces[other][::-1]
                    done[other] = True
                    queue.append(other)
    return faces


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Return the boundary loops of an oriented mesh, each an ordered vertex list."""
    directed = {(t[k], t[(k + 1) % 3]) for t in faces for k in range(3)}
    nxt = {a: b for a, b in directed if (b, a) not in directed}
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        while nxt[loop[-1]] != start:
            loop.append(nxt[loop[-1]])
        seen.update(loop)
        loops.append(loop)
    return loops


def contour_vertices(connections: frozenset) -> set[int]:
    """Return the vertex ids used by a mediapipe FACEMESH_* connection set."""
    return {v for edge in connections for v in edge}


def hole_cap(
    vertices: np.ndarray, loop: list[int], rings: list[tuple[float, np.ndarray]], apex: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Close ``loop`` with rings (scale toward its centroid, then offset [3] or [len(loop),3]) and an apex.

    Returns (new vertices [M,3], triangles [T,3] indexing ``vertices`` then the new ones).
    """
    boundary = vertices[loop]
    centre = boundary.mean(axis=0)
    new_points, previous, tris, n = [], list(loop), [], len(loop)
    for scale, offset in rings:
        ids = list(range(len(vertices) + len(new_points), len(vertices) + len(new_points) + n))
        new_points.extend(centre + scale * (boundary - centre) + offset)
        for k in range(n):
            tris += [(previous[k], previous[(k + 1) % n], ids[k]), (previous[(k + 1) % n], ids[(k + 1) % n], ids[k])]
        previous = ids
    apex_id = len(vertices) + len(new_points)
    new_points.append(centre + apex)
    tris += [(previous[k], previous[(k + 1) % n], apex_id) for k in range(n)]
    return np.array(new_points), np.array(tris, dtype=np.int64)


def eye_and_mouth_caps(
    vertices: np.ndarray, loops: dict[str, list[int]]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Return (vertices with caps appended, {region: cap triangles}) for the eye holes and the mouth pocket."""
    face_depth = LinearNDInterpolator(vertices[:468, :2], vertices[:468, 2])
    caps = {}
    for name in ("left_eye", "right_eye"):
        # Rings sink 1-2 mm behind the lid margin; the centre bulges back to lid level, like an eyeball.
        rings = [(s, np.array([0.0, 0.0, 0.003 * (1.0 - s * s) - 0.003])) for s in (0.7, 0.4)]
        new_points, caps[name] = hole_cap(vertices, loops[name], rings, np.zeros(3))
        vertices = np.concatenate([vertices, new_points])
    loop = loops["mouth_interior"]
    boundary = vertices[loop]
    centre = boundary.mean(axis=0)
    half_width = np.abs(boundary[:, 0] - centre[0]).max()
    arch = np.sqrt(np.clip(1.0 - ((boundary[:, 0] - centre[0]) / half_width) ** 2, 0.0, 1.0))
    side = np.sign(boundary[:, 1] - centre[1])  # upper lip +1, lower lip -1
    rings = []
    for scale, rise, depth in ((0.95, 0.005, 0.006), (0.85, 0.011, 0.016), (0.6, 0.009, 0.027)):
        offset = np.zeros_like(boundary)
        offset[:, 1] = side * rise * arch
        offset[:, 2] = -depth
        rings.append((scale, offset))
    new_points, caps["mouth_interior"] = hole_cap(vertices, loop, rings, np.array([0.0, 0.0, -0.032]))
    # Keep the pocket at least 4 mm behind the face surface so it never pokes through the lips or chin.
    surface = face_depth(new_points[:, :2])
    inside = np.isfinite(surface)
    new_points[inside, 2] = np.minimum(new_points[inside, 2], surface[inside] - 0.004)
    return np.concatenate([vertices, new_points]), caps


def shell_radius(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (radius [N] from SHELL_CENTRE_M along unit ``directions`` [N,3], ear weight [N]) of the head shell."""
    d = directions
    # Skull: an ellipsoid, shallower below its centre than above.
    centre = np.array([0.0, 0.022, -0.008]) - SHELL_CENTRE_M
    axes = np.stack([np.full(len(d), 0.079), np.where(d[:, 1] > 0, 0.113, 0.07), np.full(len(d), 0.1)], axis=1)
    a = np.sum((d / axes) ** 2, axis=1)
    b = -2.0 * np.sum(d * centre / axes**2, axis=1)
    c = np.sum((centre / axes) ** 2, axis=1) - 1.0
    skull = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    # Neck: an elliptic column down to a flat cap, united smoothly with the skull.
    rel_xz = d[:, [0, 2]] / NECK_RADII_XZ_M
    offset_xz = (NECK_AXIS_XZ_M - SHELL_CENTRE_M[[0, 2]]) / NECK_RADII_XZ_M
    qa, qb, qc = np.sum(rel_xz**2, axis=1), -2 * rel_xz @ offset_xz, offset_xz @ offset_xz - 1.0
    column = (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * np.maximum(qa, 1e-9))
    down = d[:, 1] < -1e-6
    cap = (NECK_BOTTOM_Y_M - SHELL_CENTRE_M[1]) / np.minimum(d[:, 1], -1e-6)
    neck = np.where(down, np.minimum(column, cap), 0.0)  # the column only goes down
    sharpness = 1.0 / 0.008
    radius = np.logaddexp(sharpness * skull, sharpness * neck) / sharpness
    # Ears: bumps on the sides, a little behind and below the star centre, taller than wide.
    ear = np.zeros(len(d))
    for sign in (-1.0, 1.0):
        axis = np.array([sign, -0.12, -0.25]) / np.linalg.norm([1.0, -0.12, -0.25])
        up = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
        up /= np.linalg.norm(up)
        vertical, horizontal = d @ up, d @ np.cross(axis, up)
        ear = np.maximum(ear, np.exp(-((vertical / 0.33) ** 2) - (horizontal / 0.2) ** 2) * (d @ axis > 0))
    return radius + 0.016 * ear, ear


def stereographic(directions: np.ndarray) -> np.ndarray:
    """Project unit ``directions`` [N,3] to the plane from the -z pole (the back of the head)."""
    return directions[:, :2] / (1.0 + directions[:, 2:3])


def head_shell(vertices: np.ndarray, oval: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (shell vertices [M,3], shell triangles indexing ``vertices`` then the shell, ear weight [M])."""
    oval_dirs = vertices[oval] - SHELL_CENTRE_M
    oval_radius = np.linalg.norm(oval_dirs, axis=1)
    oval_dirs /= oval_radius[:, None]
    face_polygon = Polygon(stereographic(oval_dirs))
    # Dense candidates on the shell surface, then farthest-point sampling to an even spacing.
    count = 40000
    golden = np.pi * (3.0 - np.sqrt(5.0))
    height = 1.0 - 2.0 * (np.arange(count) + 0.5) / count
    ring = np.sqrt(1.0 - height**2)
    dirs = np.stack([ring * np.cos(golden * np.arange(count)), height, ring * np.sin(golden * np.arange(count))], 1)
    # Keep candidates off the face and out of each oval edge's diametral cone, so the hull keeps the oval edges.
    edge_mid = oval_dirs + np.roll(oval_dirs, -1, axis=0)
    edge_mid /= np.linalg.norm(edge_mid, axis=1, keepdims=True)
    half_angle = 0.5 * np.arccos(np.clip(np.sum(oval_dirs * np.roll(oval_dirs, -1, axis=0), axis=1), -1.0, 1.0))
    near_edge = (np.arccos(np.clip(dirs @ edge_mid.T, -1.0, 1.0)) < 1.15 * half_angle).any(axis=1)
    dirs = dirs[~face_polygon.contains_points(stereographic(dirs)) & ~near_edge]
    radius, ear = shell_radius(dirs)
    # Blend toward the oval's own radius near the face border so the shell meets the face smoothly.
    angle_to_oval = np.arccos(np.clip(dirs @ oval_dirs.T, -1.0, 1.0))
    weights = 1.0 / np.maximum(angle_to_oval, 1e-6) ** 4
    border_radius = (weights @ oval_radius) / weights.sum(axis=1)
    blend = np.exp(-((angle_to_oval.min(axis=1) / 0.22) ** 2))
    points = SHELL_CENTRE_M + dirs * ((1.0 - blend) * radius + blend * border_radius)[:, None]
    chosen, distance = [], np.linalg.norm(points[:, None] - vertices[oval][None], axis=-1).min(axis=1)
    while distance.max() > SHELL_SPACING_M:
        chosen.append(int(distance.argmax()))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    points, dirs, ear = points[chosen], dirs[chosen], ear[chosen]
    hull = ConvexHull(np.concatenate([oval_dirs, dirs]))
    ids = np.concatenate([np.asarray(oval), len(vertices) + np.arange(len(points))])
    tris, corners = hull.simplices, hull.points[hull.simplices]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    tris = np.where(np.einsum("ij,ij->i", normals, corners[:, 0])[:, None] > 0, tris, tris[:, ::-1])  # outward
    centroid = corners.mean(axis=1)
    centroid /= np.linalg.norm(centroid, axis=1, keepdims=True)
    on_face = (tris < len(oval)).all(axis=1) & face_polygon.contains_points(stereographic(centroid))
    return points, ids[tris[~on_face]], ear


def flip_to_delaunay(vertices: np.ndarray, tris: np.ndarray, fixed: np.ndarray, passes: int = 50) -> np.ndarray:
    """Flip edges between two ``tris`` [N,3] whose opposite angles sum over 180° (no edge of ``fixed`` [M,3] moves).

    The shell is triangulated in direction space, which makes slivers where rays graze the
    surface (the neck); intrinsic Delaunay flips in 3D remove most of them.
    """
    tris = [list(t) for t in tris]
    existing = {frozenset(e) for t in np.concatenate([fixed, tris]) for e in itertools.combinations(t, 2)}

    def angle(at: int, u: int, v: int) -> float:
        a, b = vertices[u] - vertices[at], vertices[v] - vertices[at]
        return float(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0)))

    for _ in range(passes):
        owner = {}
        for index, (a, b, c) in enumerate(tris):
            owner.update({(a, b): index, (b, c): index, (c, a): index})
        touched, flips = set(), 0
        for (a, b), f in owner.items():
            g = owner.get((b, a))
            if g is None or f in touched or g in touched:
                continue
            c = next(v for v in tris[f] if v not in (a, b))
            d = next(v for v in tris[g] if v not in (a, b))
            if frozenset((c, d)) in existing or angle(c, a, b) + angle(d, a, b) <= np.pi + 1e-6:
                continue
            normal = np.cross(vertices[b] - vertices[a], vertices[c] - vertices[a])
            normal += np.cross(vertices[a] - vertices[b], vertices[d] - vertices[b])
            new = [[a, d, c], [d, b, c]]
            if any(np.cross(vertices[q] - vertices[p], vertices[r] - vertices[p]) @ normal <= 0 for p, q, r in new):
                continue  # the flip would fold the surface
            tris[f], tris[g] = new
            existing.symmetric_difference_update({frozenset((a, b)), frozenset((c, d))})
            touched.update((f, g))
            flips += 1
        if flips == 0:
            break
    return np.array(tris, dtype=np.int64)


def label_face_regions(vertices: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """Return face-triangle regions (lips, eyelids, brows, nose, jaw) as indices into ``faces``."""
    centroid = vertices[faces].mean(axis=1)

    def touching(ids: set[int], rings: int, minimum: int = 1) -> np.ndarray:
        ids = set(ids)
        for _ in range(rings):
            ids |= {v for tri in faces if np.isin(tri, list(ids)).sum() >= minimum for v in tri}
        return np.flatnonzero(np.isin(faces, list(ids)).sum(axis=1) >= minimum)

    def inside_hull(ids: set[int]) -> np.ndarray:
        points = vertices[sorted(ids), :2]
        outline = Polygon(points[ConvexHull(points).vertices])
        return np.flatnonzero(outline.contains_points(centroid[:, :2]))

    mouth_corner_y = vertices[[61, 291], 1].mean()
    return {
        "lips": inside_hull(contour_vertices(fmc.FACEMESH_LIPS)),
        "left_eye": touching(contour_vertices(fmc.FACEMESH_LEFT_EYE), 1),
        "right_eye": touching(contour_vertices(fmc.FACEMESH_RIGHT_EYE), 1),
        "left_brow": touching(contour_vertices(fmc.FACEMESH_LEFT_EYEBROW), 0, minimum=2),
        "right_brow": touching(contour_vertices(fmc.FACEMESH_RIGHT_EYEBROW), 0, minimum=2),
        "nose": inside_hull(contour_vertices(fmc.FACEMESH_NOSE)),
        "jaw": np.flatnonzero(centroid[:, 1] < mouth_corner_y),
    }


def build_template() -> HeadTemplate:
    """Build the full head template (deterministic: same mediapipe, same asset)."""
    face_vertices, iris_points = symmetric_landmarks()
    faces = orient_consistently(face_triangles())
    loops = {}
    for loop in boundary_loops(faces):
        for name, contour in (("face_oval", fmc.FACEMESH_FACE_OVAL), ("left_eye", fmc.FACEMESH_LEFT_EYE),
                              ("right_eye", fmc.FACEMESH_RIGHT_EYE), ("mouth_interior", fmc.FACEMESH_LIPS)):
            if set(loop) <= contour_vertices(contour):
                loops[name] = loop
    if len(loops) != 4:
        raise RuntimeError(f"expected 4 holes in the face mesh (oval, eyes, mouth), matched {sorted(loops)}")
    regions = {"face": np.arange(len(faces))} | label_face_regions(face_vertices, faces)
    vertices, caps = eye_and_mouth_caps(face_vertices, loops)
    shell_points, shell_tris, ear = head_shell(vertices, loops["face_oval"])
    shell_start = len(vertices)
    vertices = np.concatenate([vertices, shell_points])
    shell_tris = flip_to_delaunay(vertices, shell_tris, fixed=np.concatenate([faces, *caps.values()]))
    all_faces, offset = [faces], len(faces)
    for name, tris in caps.items():
        regions[name] = np.concatenate([regions.get(name, np.zeros(0, np.int64)), offset + np.arange(len(tris))])
        all_faces.append(tris)
        offset += len(tris)
    shell_ids = offset + np.arange(len(shell_tris))
    shell_only = np.where(shell_tris >= shell_start, shell_tris - shell_start, -1)
    on_ear = np.where(shell_only >= 0, ear[shell_only], 0.0).max(axis=1) > 0.3
    below_chin = vertices[shell_tris].mean(axis=1)[:, 1] < vertices[152, 1]
    regions["ears"] = shell_ids[on_ear]
    regions["neck"] = shell_ids[~on_ear & below_chin]
    regions["skull"] = shell_ids[~on_ear & ~below_chin]
    faces = orient_consistently(np.concatenate(all_faces + [shell_tris]))
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    if np.einsum("ij,ij->i", a, np.cross(b, c)).sum() < 0:
        faces = faces[:, ::-1].copy()
    directed = Counter((t[k], t[(k + 1) % 3]) for t in faces.tolist() for k in range(3))
    if max(directed.values()) > 1 or any((b, a) not in directed for a, b in directed):
        raise RuntimeError("the assembled head is not a closed, consistently oriented manifold")
    return HeadTemplate(
        vertices=vertices.astype(np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.int64),
        iris_points=iris_points.astype(np.float32),
        regions={name: np.sort(idx).astype(np.int64) for name, idx in regions.items()},
    )


def main() -> None:
    """Parse the output path and write the template there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_TEMPLATE_PATH, help="output .npz path")
    out = parser.parse_args().out
    template = build_template()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_template(template, out)
    print(f"{out}: {len(template.vertices)} vertices, {len(template.faces)} faces")


if __name__ == "__main__":
    main()
