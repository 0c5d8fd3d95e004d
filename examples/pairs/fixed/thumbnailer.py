import os
import subprocess
import uuid


class ThumbnailError(Exception):
    pass


class Thumbnailer:
    SIZES = {"small": 96, "medium": 256, "large": 640}

    def __init__(self, upload_dir, thumb_dir):
        self.upload_dir = upload_dir
        self.thumb_dir = thumb_dir

    def _dimensions(self, src):
        out = subprocess.run(["identify", "-format", "%w %h", src],
                             capture_output=True, text=True, check=True).stdout
        width, height = out.split()[:2]
        return int(width), int(height)

    def _convert(self, src, dst, size):
        argv = ["convert", src, "-auto-orient", "-thumbnail", f"{size}x{size}", dst]
        proc = subprocess.run(argv, capture_output=True)
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip()
            raise ThumbnailError(f"convert failed for {src}: {detail}")

    def create(self, filename, variant="medium"):
        """filename is the name under which the client's upload was stored."""
        size = self.SIZES.get(variant)
        if size is None:
            raise ThumbnailError(f"unknown variant {variant!r}")
        src = os.path.join(self.upload_dir, os.path.basename(filename))
        if not os.path.isfile(src):
            raise ThumbnailError("no such upload")
        width, height = self._dimensions(src)
        dst = os.path.join(self.thumb_dir, f"{uuid.uuid4().hex}-{variant}.png")
        self._convert(src, dst, min(size, max(width, height)))
        return dst
