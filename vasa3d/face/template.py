"""The head template: mediapipe's face topology plus a closed shell for skull, ears and neck.

Frame ("world"/template): right-handed, metres, origin near the head centre
(between the ears), +x toward the subject's left, +y up, +z out of the face.
The first 468 vertices are mediapipe's face-mesh landmarks 0..467, in order, so
landmark ``i`` is vertex ``i``. The asset is built by ``scripts/build_template.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

REGION_NAMES: tuple[str, ...] = (
    "face", "lips", "mouth_interior", "left_eye", "right_eye", "left_brow", "right_brow",
    "nose", "jaw", "skull", "ears", "neck",
)
NUM_LANDMARK_VERTICES = 468
NUM_IRIS_POINTS = 10
DEFAULT_TEMPLATE_PATH = Path(__file__).parent / "assets" / "head_template.npz"


@dataclass(frozen=True)
class HeadTemplate:
    """A closed, manifold, outward-oriented full-head triangle mesh with named regions."""

    vertices: np.ndarray  # [V, 3] float32, template frame, metres
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    iris_points: np.ndarray  # [10, 3] float32, mediapipe landmarks 468..477
    regions: dict[str, np.ndarray]  # name -> triangle indices [N] int64 (regions may overlap)
    num_landmark_vertices: int = NUM_LANDMARK_VERTICES

    def region_vertex_mask(self, name: str) -> np.ndarray:
        """Return a [V] bool mask of the vertices used by region ``name``'s triangles."""
        if name not in self.regions:
            raise KeyError(f"unknown template region {name!r}; known regions: {sorted(self.regions)}")
        mask = np.zeros(len(self.vertices), dtype=bool)
        mask[self.faces[self.regions[name]].ravel()] = True
        return mask

    def bound_to(self, binding, *names: str):
        """``[N]`` bool tensor: which Gaussians (``binding [N]``, a tensor of parent-triangle indices) are bound
        to a triangle of any of the regions ``names``."""
        import torch

        for name in names:
            if name not in self.regions:
                raise KeyError(f"unknown template region {name!r}; known regions: {sorted(self.regions)}")
        faces = np.concatenate([self.regions[name] for name in names]) if names else np.zeros(0, np.int64)
        return torch.isin(binding, torch.from_numpy(faces).to(binding.device))

    def landmarks(self) -> np.ndarray:
        """Return the [478, 3] mediapipe landmarks in the template frame: vertices[:468], then the iris points."""
        return np.concatenate([self.vertices[: self.num_landmark_vertices], self.iris_points], axis=0)


def save_template(template: HeadTemplate, path: str | os.PathLike) -> None:
    """Write ``template`` to a compressed ``.npz`` at ``path`` (the format ``load_template`` reads)."""
    arrays = {
        "vertices": template.vertices.astype(np.float32),
        "faces": template.faces.astype(np.int32),  # int32 on disk keeps the asset small
        "iris_points": template.iris_points.astype(np.float32),
        "num_landmark_vertices": np.int64(template.num_landmark_vertices),
    }
    arrays.update({f"region_{name}": idx.astype(np.int32) for name, idx in template.regions.items()})
    with open(path, "wb") as stream:  # a file object stops numpy appending ".npz" to the name
        np.savez_compressed(stream, **arrays)


def load_template(path: str | os.PathLike | None = None) -> HeadTemplate:
    """Load a head template; ``path`` None loads the packaged asset (cached, shared: do not modify it)."""
    return _load_cached(Path(path).resolve() if path is not None else DEFAULT_TEMPLATE_PATH)


@lru_cache(maxsize=4)
def _load_cached(path: Path) -> HeadTemplate:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: head template not found — rebuild it with `python scripts/build_template.py {path}`"
        )
    with np.load(path) as data:
        regions = {
            key.removeprefix("region_"): data[key].astype(np.int64) for key in data.files if key.startswith("region_")
        }
        template = HeadTemplate(
            vertices=data["vertices"].astype(np.float32),
            faces=data["faces"].astype(np.int64),
            iris_points=data["iris_points"].astype(np.float32),
            regions=regions,
            num_landmark_vertices=int(data["num_landmark_vertices"]),
        )
    for array in (template.vertices, template.faces, template.iris_points, *regions.values()):
        array.setflags(write=False)
    return template
