"""Teachers: 2D generators that animate one portrait by motion latents (built-in or plugged in)."""

from vasa3d.teachers.base import Teacher, TeacherOutput
from vasa3d.teachers.mesh_lift import MeshLiftTeacher
from vasa3d.teachers.video_folder import VideoFolderTeacher

__all__ = ["MeshLiftTeacher", "Teacher", "TeacherOutput", "VideoFolderTeacher"]
