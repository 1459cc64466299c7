"""Long videos as chunks of a model's native window: latent layouts, planning, stitching, colour matching,
seam metrics.

Pure numpy. Worked example: N=40 frames, window W=16, overlap O=4. Chunk starts step by W-O=12: 0, 12,
24, and the last chunk is aligned to the end, so the chunks are [0,16), [12,28), [24,40). Frames that
two chunks share are blended with a linear ramp, so the video has exactly N frames.

Chunks are planned in latent frames, the unit a model denoises. Where a family's latents compress time (a
diffusion transformer's VAE packs 4 video frames into one latent frame, the first one alone), the plan above
runs over latent frames and each chunk's video frames follow from its latent ones (see LatentLayout).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANCHORED, CHAIN, KEYFRAMES = "anchored", "chain", "keyframes"


@dataclass(frozen=True)
class LatentLayout:
    """How a family's latents hold a video.

    With temporal compression c and a causal first frame, latent frame 0 holds video frame 0 alone and latent
    frame j > 0 holds video frames 4j-3..4j (c=4): a video of c*k+1 frames has k+1 latent frames, and a chunk of
    latent frames [s, e), rendered as a video of its own, gives video frames [c*s, c*(e-1)+1). Without a causal
    first frame, latent frame j holds video frames cj..cj+c-1. Today's UNet families have c=1: one latent frame
    per video frame."""

    # axis of the frames in one video's latents (output_type="latent", batch removed); None: a long row's chunks
    # are stitched as frames, not as latents decoded after stitching
    frame_axis: int | None = None
    # video frames per latent frame
    temporal: int = 1
    # the first latent frame holds the first video frame alone (valid frame counts are then c*k+1)
    causal_first: bool = False
    # pixels per latent pixel each way in the published VAE (a tiny preset's VAE may have fewer)
    spatial: int = 8
    # latent pixels per token each way (a transformer's patch size): sizes are multiples of spatial * patch
    patch: int = 1

    @property
    def size_multiple(self) -> int:
        return self.spatial * self.patch

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a video of `frames` frames (a valid count)."""
        return (frames - 1) // self.temporal + 1 if self.causal_first else frames // self.temporal

    def video_span(self, start: int, end: int) -> tuple[int, int]:
        """The video frames [a, b) that latent frames [start, end) render to."""
        if self.causal_first:
            return self.temporal * start, self.temporal * (end - 1) + 1
        return self.temporal * start, self.temporal * end

    def valid_frames(self, frames: int) -> bool:
        if self.causal_first:
            return frames % self.temporal == 1 % self.temporal
        return frames % self.temporal == 0

    def frame_rule(self) -> str:
        """The valid frame counts, as an error message names them."""
        c = self.temporal
        return f"{c}k+1 ({c + 1}, {2 * c + 1}, ...)" if self.causal_first else f"a multiple of {c}"

    def nearest_frames(self, frames: int) -> tuple[int, ...]:
        """The valid frame counts on either side of `frames` (one where the lower would be below one frame)."""
        lower = next(n for n in range(frames, frames - self.temporal - 1, -1) if self.valid_frames(n))
        upper = lower + self.temporal
        return (upper,) if lower < 1 else (lower, upper)


# one latent frame per video frame
FRAME_LAYOUT = LatentLayout()


@dataclass(frozen=True)
class Chunk:
    index: int
    # first absolute video frame
    start: int
    # one past the last absolute video frame
    end: int
    # the same span in latent frames (the noise bank's index); default: the video span (one latent per frame)
    latent_start: int | None = None
    latent_end: int | None = None

    def __post_init__(self):
        if self.latent_start is None:
            object.__setattr__(self, "latent_start", self.start)
        if self.latent_end is None:
            object.__setattr__(self, "latent_end", self.end)

    @property
    def frames(self) -> int:
        return self.end - self.start

    def in_latents(self) -> Chunk:
        """This chunk with its latent span as its frames: what stitching latents blends."""
        return Chunk(self.index, self.latent_start, self.latent_end)


def plan_chunks(num_frames: int, window: int, overlap: int, layout: LatentLayout = FRAME_LAYOUT) -> tuple[Chunk, ...]:
    """Chunks of `window` frames starting every `window - overlap` frames, the last one ending at N, planned in
    the layout's latent frames (`window` a valid frame count; `overlap` rounded up to whole latent frames)."""
    latents, latent_window = layout.latent_frames(num_frames), layout.latent_frames(window)
    latent_overlap = -(-overlap // layout.temporal)
    spans = _spans(latents, latent_window, latent_overlap)
    return tuple(Chunk(i, *layout.video_span(s, e), s, e) for i, (s, e) in enumerate(spans))


def plan_keyframe_windows(num_frames: int, window: int, layout: LatentLayout = FRAME_LAYOUT) -> tuple[Chunk, ...]:
    """The windows of a row rendered between keyframes: keyframes every `window - 1` frames and on the last frame,
    each window from one keyframe to the next, so neighbours share exactly that frame; the last window is as long
    as what is left (a valid count, as N and the window are). A window's latent span starts on the latent frame
    that holds its first keyframe, which the previous window's span ends on: the two draw the same noise there."""
    step = window - 1
    starts = range(0, max(num_frames - 1, 1), step) if num_frames > window else [0]
    chunks = []
    for index, start in enumerate(starts):
        end = min(start + step, num_frames - 1) + 1 if num_frames > window else num_frames
        latent_start = layout.latent_frames(start + 1) - 1 if start else 0
        chunks.append(Chunk(index, start, end, latent_start, layout.latent_frames(end)))
    return tuple(chunks)


def keyframe_chunks(windows: tuple[Chunk, ...], layout: LatentLayout = FRAME_LAYOUT) -> tuple[Chunk, ...]:
    """The keyframes of a row planned as `plan_keyframe_windows`: one frame each, on every window's first frame
    and on the last window's last, with the latent frame that holds it (its noise)."""
    frames = [chunk.start for chunk in windows] + [windows[-1].end - 1]
    return tuple(Chunk(k, f, f + 1, layout.latent_frames(f + 1) - 1, layout.latent_frames(f + 1))
                 for k, f in enumerate(frames))


def join_at_keyframes(windows: tuple[Chunk, ...], parts: list[np.ndarray]) -> np.ndarray:
    """Windows rendered between keyframes joined into exactly N frames: a frame two windows share (a keyframe)
    is taken from the earlier window, never blended."""
    for chunk, part in zip(windows, parts, strict=True):
        if len(part) != chunk.frames:
            raise ValueError(f"chunk {chunk.index} has {len(part)} frames, planned {chunk.frames}")
    return np.concatenate([parts[0], *(part[1:] for part in parts[1:])])


def _spans(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    if window < 1:
        raise ValueError(f"window={window}: must be >= 1")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap}: must be >= 0 and smaller than the window ({window})")
    if length <= window:
        return [(0, length)]
    starts = [0]
    while starts[-1] + window < length:
        starts.append(min(starts[-1] + window - overlap, length - window))
    return [(s, s + window) for s in starts]


def blend_weights(chunks: tuple[Chunk, ...]) -> list[np.ndarray]:
    """Per-chunk frame weights: 1 inside, a linear ramp across each overlap with a neighbour."""
    weights = []
    for i, chunk in enumerate(chunks):
        w = np.ones(chunk.frames)
        # ramp up over the overlap with the previous chunk
        if i > 0:
            shared = max(0, chunks[i - 1].end - chunk.start)
            w[:shared] = np.minimum(w[:shared], np.arange(1, shared + 1) / (shared + 1))
        # ramp down over the overlap with the next chunk
        if i + 1 < len(chunks):
            shared = max(0, chunk.end - chunks[i + 1].start)
            w[chunk.frames - shared:] = np.minimum(w[chunk.frames - shared:], np.arange(shared, 0, -1) / (shared + 1))
        weights.append(w)
    return weights


def stitch(chunks: tuple[Chunk, ...], parts: list[np.ndarray]) -> np.ndarray:
    """Blend the chunks' frames (frames first, any trailing shape) into exactly N frames of the parts' dtype.

    Works frame by frame, so a long video never needs more than its own size in memory (uint8 frames
    stay uint8; latents stay float32)."""
    if len(parts) != len(chunks):
        raise ValueError(f"{len(parts)} parts for {len(chunks)} chunks")
    for chunk, part in zip(chunks, parts, strict=True):
        if len(part) != chunk.frames:
            raise ValueError(f"chunk {chunk.index} has {len(part)} frames, planned {chunk.frames}")
    weights = blend_weights(chunks)
    out = np.empty((chunks[-1].end, *parts[0].shape[1:]), parts[0].dtype)
    for t in range(len(out)):
        covering = [(part[t - c.start], w[t - c.start])
                    for c, part, w in zip(chunks, parts, weights, strict=True) if c.start <= t < c.end]
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
