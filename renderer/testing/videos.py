"""The test video reader: a committed mp4 read back whole, to count and compare its frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..video import decode


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """All frames (F, H, W, 3) and the frame rate."""
    frames, fps = decode(path)
    return np.stack(frames), fps
