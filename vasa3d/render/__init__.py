"""Inference: talking video from (avatar, audio, camera path), offline or streaming."""

from vasa3d.render.cameras import camera_path, view_about_head
from vasa3d.render.talking import RenderStats, TalkingHead
from vasa3d.render.video import Mp4Writer

__all__ = ["Mp4Writer", "RenderStats", "TalkingHead", "camera_path", "view_about_head"]
