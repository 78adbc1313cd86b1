"""The pixels of an analysed portrait that a head model should explain."""

from __future__ import annotations

import cv2
import numpy as np

from vasa3d.face.analysis import PortraitAnalysis
from vasa3d.face.template import load_template

CHIN_LANDMARK = 152  # mediapipe face-mesh index of the chin tip


def head_region(analysis: PortraitAnalysis, template_path: str | None = None, dilate_frac: float = 0.03) -> np.ndarray:
    """``[S, S]`` float mask of the pixels the head model should explain.

    The photo's foreground also holds shoulders and clothes that no head model covers, and
    hair that reaches beyond the template's skull. The region is the posed template's
    silhouette plus the foreground above the chin (hair), dilated by ``dilate_frac`` of the
    crop so that the background around the head supervises the silhouette too.
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
    chin_row = int(np.ceil(analysis.landmarks[CHIN_LANDMARK, 1]))
    hair = analysis.mask > 0.5
    hair[max(chin_row, 0):] = False
    region |= hair.astype(np.uint8)
    radius = max(1, int(round(dilate_frac * size)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(region, kernel).astype(np.float32)
