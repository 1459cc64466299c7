"""Long videos as chunks of a model's native window: planning, stitching, colour matching, seam metrics.

Pure numpy. Worked example: N=40 frames, window W=16, overlap O=4. Chunk starts step by W-O=12: 0, 12,
24, and the last chunk is aligned to the end, so the chunks are [0,16), [12,28), [24,40). Frames that
two chunks share are blended with a linear ramp, so the video has exactly N frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANCHORED, CHAIN = "anchored", "chain"


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first absolute frame
    end: int  # one past the last absolute frame

    @property
    def frames(self) -> int:
        return self.end - self.start


def plan_chunks(num_frames: int, window: int, overlap: int) -> tuple[Chunk, ...]:
    """Chunks of `window` frames starting every `window - overlap` frames, the last one ending at N."""
    if window < 1:
        raise ValueError(f"window={window}: must be >= 1")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap}: must be >= 0 and smaller than the window ({window})")
    if num_frames <= window:
        return (Chunk(0, 0, num_frames),)
    starts = [0]
    while starts[-1] + window < num_frames:
        starts.append(min(starts[-1] + window - overlap, num_frames - window))
    return tuple(Chunk(i, s, s + window) for i, s in enumerate(starts))


def blend_weights(chunks: tuple[Chunk, ...]) -> list[np.ndarray]:
    """Per-chunk frame weights: 1 inside, a linear ramp across each overlap with a neighbour."""
    weights = []
    for i, chunk in enumerate(chunks):
        w = np.ones(chunk.frames)
        if i > 0:  # ramp up over the overlap with the previous chunk
            shared = max(0, chunks[i - 1].end - chunk.start)
            w[:shared] = np.minimum(w[:shared], np.arange(1, shared + 1) / (shared + 1))
        if i + 1 < len(chunks):  # ramp down over the overlap with the next chunk
            shared = max(0, chunk.end - chunks[i + 1].start)
            w[chunk.frames - shared:] = np.minimum(w[chunk.frames - shared:], np.arange(shared, 0, -1) / (shared + 1))
        weights.append(w)
    return weights


def stitch(chunks: tuple[Chunk, ...], parts: list[np.ndarray]) -> np.ndarray:
    """Blend the chunks' frames (frames first, any trailing shape) into exactly N frames of the parts' dtype.

    Works frame by frame, so a long video never needs more than its own size in memory (uint8 frames
    stay uint8; latents stay float32)."""
    for chunk, part in zip(chunks, parts):
        if len(part) != chunk.frames:
            raise ValueError(f"chunk {chunk.index} has {len(part)} frames, planned {chunk.frames}")
    weights = blend_weights(chunks)
    out = np.empty((chunks[-1].end, *parts[0].shape[1:]), parts[0].dtype)
    for t in range(len(out)):
        covering = [(part[t - c.start], w[t - c.start]) for c, part, w in zip(chunks, parts, weights) if c.start <= t < c.end]
        if len(covering) == 1:
            out[t] = covering[0][0]
            continue
        total = sum(w for _, w in covering)
        blended = sum(frame.astype(np.float32) * (w / total) for frame, w in covering)
        out[t] = blended.round().clip(0, 255) if out.dtype == np.uint8 else blended
    return out


def colour_match(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """uint8 frames with each RGB channel's mean and spread moved to those of `reference` (stops the colour
    drift of chained chunks, each of which starts from the last one's output)."""
    source, target = frames.astype(np.float32), reference.astype(np.float32)
    axes = tuple(range(source.ndim - 1))
    mean, std = source.mean(axis=axes), source.std(axis=axes) + 1e-6
    matched = (source - mean) / std * target.std(axis=axes) + target.mean(axis=axes)
    return matched.round().clip(0, 255).astype(np.uint8)


def seam_metrics(video: np.ndarray, chunks: tuple[Chunk, ...]) -> dict:
    """Weight-free seam quality of a stitched uint8 video.

    `seams`: for each seam, the mean absolute difference of the two frames across it over the median of
    that difference inside the chunks, so a seam that looks like ordinary motion scores about 1. A
    blended seam spreads over the overlap, so its score is the larger of the jumps at the overlap's two
    edges (where the next chunk starts counting and where the previous one stops).
    `drift`: each chunk's mean colour distance (CIELAB) from the first chunk's.
    """
    steps = np.array([np.abs(video[t + 1].astype(np.float32) - video[t]).mean() for t in range(len(video) - 1)])
    edges = [(max(0, chunks[k + 1].start - 1), chunks[k].end - 1) for k in range(len(chunks) - 1)]
    at_seams = {t for pair in edges for t in pair}
    inside = steps[[t for t in range(len(steps)) if t not in at_seams]]
    typical = float(np.median(inside)) if len(inside) else 0.0
    seams = [float(max(steps[a], steps[b]) / typical) if typical > 0 else 0.0 for a, b in edges]
    colours = [_lab(video[c.start:c.end]).reshape(-1, 3).mean(axis=0) for c in chunks]
    drift = [float(np.linalg.norm(c - colours[0])) for c in colours]
    return {"seams": seams, "drift": drift}


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> CIELAB (D65)."""
    c = rgb.astype(np.float32) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                            np.float32).T
    xyz /= np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
