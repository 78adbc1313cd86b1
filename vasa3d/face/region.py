"""The pixels of an analysed portrait that a head model should explain."""

from __future__ import annotations

import cv2
import numpy as np

from vasa3d.face.analysis import PortraitAnalysis
from vasa3d.face.template import load_template

CHIN_LANDMARK = 152  # mediapipe face-mesh index of the chin tip
CHEEK_LANDMARKS = (234, 454)  # the face's widest points, right and left
MOUTH_CORNERS = (61, 291)


def head_region(analysis: PortraitAnalysis, template_path: str | None = None, dilate_frac: float = 0.03,
                hair_margin: float = 0.35, neck_width: float = 0.9, subject_only: bool = True) -> np.ndarray:
    """``[S, S]`` float mask of the pixels the head model should explain: the chosen subject's head only.

    The photo's foreground also holds shoulders and clothes that no head model covers, hair
    that reaches beyond the template's skull and, in a group photo, the people beside the
    subject. The region is the posed template's silhouette, cut below the chin to a neck column
    ``neck_width`` face widths wide, plus the foreground above the chin (hair) that belongs to the
    subject: the part of the matte connected to the face, within ``hair_margin`` face widths
    of the silhouette and, below the mouth, within the neck column. It is dilated by ``dilate_frac``
    of the crop so that the background around the head supervises the silhouette too.
    ``subject_only=False`` is the earlier region (for comparisons): the whole silhouette and all the
    foreground above the chin.
    """
    template = load_template(template_path)
    size = analysis.crop.shape[0]
    verts = template.vertices @ analysis.viewmat[:3, :3].T + analysis.viewmat[:3, 3]
    pix = verts @ analysis.K.T
    pix = pix[:, :2] / pix[:, 2:3]
    region = np.zeros((size, size), np.uint8)
    triangles = np.round(pix[template.faces] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    for triangle in triangles:  # one at a time: fillPoly on many polygons cancels where they overlap
        cv2.fillConvexPoly(region, triangle, 1, lineType=cv2.LINE_8, shift=2)
    chin_x, chin_y = analysis.landmarks[CHIN_LANDMARK, :2]
    if not subject_only:
        hair = analysis.mask > 0.5
        hair[max(int(np.ceil(chin_y)), 0):] = False
        region |= hair.astype(np.uint8)
        return _dilated(region, dilate_frac)
    face_width = abs(float(analysis.landmarks[CHEEK_LANDMARKS[1], 0] - analysis.landmarks[CHEEK_LANDMARKS[0], 0]))
    chin_row = max(int(np.ceil(chin_y)), 0)
    cheek_row = max(int(np.ceil(analysis.landmarks[list(CHEEK_LANDMARKS), 1].max())), 0)
    face = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(analysis.landmarks[:468, :2] * 4).astype(np.int32)), 1,
                       lineType=cv2.LINE_8, shift=2)
    beside = np.zeros((size, size), bool)
    beside[cheek_row:, np.abs(np.arange(size) - chin_x) > neck_width * face_width / 2] = True
    region[beside & (face == 0)] = 0  # below the cheeks: the face and a neck column, no shoulders or neighbours
    hair = subject_matte(analysis) > 0.5
    hair[chin_row:] = False
    reach = max(1, int(round(hair_margin * face_width)))
    near = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
    mouth_row = max(int(np.ceil(analysis.landmarks[list(MOUTH_CORNERS), 1].max())), 0)
    hair[mouth_row:, np.abs(np.arange(size) - chin_x) > neck_width * face_width / 2] = False
    region |= (hair & (near > 0)).astype(np.uint8)
    return _dilated(region, dilate_frac)


def _dilated(region: np.ndarray, dilate_frac: float) -> np.ndarray:
    radius = max(1, int(round(dilate_frac * region.shape[0])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(region, kernel).astype(np.float32)


def subject_matte(analysis: PortraitAnalysis) -> np.ndarray:
    """``[S, S]`` the foreground matte reduced to the parts connected to the analysed face: in a group
    photo, the people who do not touch the subject are left out."""
    foreground = (analysis.mask > 0.5).astype(np.uint8)
    count, labels = cv2.connectedComponents(foreground, connectivity=8)
    if count <= 2:
        return analysis.mask
    size = analysis.mask.shape[0]
    points = np.clip(np.round(analysis.landmarks[:468, :2]).astype(int), 0, size - 1)
    keep = np.unique(labels[points[:, 1], points[:, 0]])
    keep = keep[keep > 0]
    return analysis.mask * np.isin(labels, keep)
