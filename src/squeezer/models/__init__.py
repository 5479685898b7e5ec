"""Find and describe model files: local folders, packaged defaults, the local HF cache."""

from squeezer.models.folder import ModelFolder, read_folder
from squeezer.models.locate import locate, package_dir

__all__ = ["ModelFolder", "locate", "package_dir", "read_folder"]
