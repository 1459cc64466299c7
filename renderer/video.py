"""mp4 encoding (H.264, yuv420p) with an atomic commit, and decoding, inside this process through PyAV
(FFmpeg's libraries). Starting an ffmpeg program per video instead costs 25-30 ms of CPU each time: all of
a small video's encode, and most of the check of a row's video (bench/video_io.py). Also the poster shown
for a video before it plays: its first frame as a small JPEG."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from . import fault_hook, storage

# a poster's longer side at most (a gallery card shows it at about this size); smaller frames keep their size
POSTER_SIDE = 320
POSTER_QUALITY = 85


def write_mp4(frames: np.ndarray, final: str | Path, fps: int, row_id: str = "") -> storage.Digest:
    """Encode uint8 frames (F, H, W, 3) to `final` (a local path or an object URI); a crash never leaves a
    partial file there (see storage.writing). `row_id` names the row for fault injection (see fault_hook.py).
    Returns the size and checksum of the bytes committed."""
    import av

    count, height, width, _ = frames.shape
    with storage.writing(final) as temp:
        # faststart: the index goes first, so a player can start before the whole file has arrived
        with av.open(str(temp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index, frame in enumerate(frames):
                fault_hook.strike("encode", row_id, done=index / count)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            # the frames the encoder still holds
            container.mux(stream.encode())
        return storage.digest(temp)


def write_poster(frame: np.ndarray, final: str | Path) -> storage.Digest:
    """Write one uint8 frame (H, W, 3) as a JPEG at `final` (a local path or an object URI), scaled down to
    POSTER_SIDE on its longer side with its aspect kept, under the same atomic rule as the videos. Returns the
    size and checksum of the bytes committed."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    scale = POSTER_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    with storage.writing(final, content_type="image/jpeg") as temp:
        image.save(temp, format="JPEG", quality=POSTER_QUALITY)
        return storage.digest(temp)


def decode(source, limit: int | None = None, size: tuple[int, int] | None = None) -> tuple[list, float]:
    """The first `limit` frames (all when None) of the first video stream of `source` (a local path, or a
    seekable file such as storage.opened gives) as uint8 RGB arrays (H, W, 3), scaled to `size` (width,
    height) when given, and its frame rate. A file that is not a video raises av's error, or ValueError when
    it has no video stream."""
    import av

    # a file object is read in 1 MiB requests: one for a small video or a header, a few for a large one
    with av.open(str(source) if isinstance(source, (str, Path)) else source, buffer_size=1 << 20) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        width, height = size or (stream.codec_context.width, stream.codec_context.height)
        frames = [frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
                  for frame in itertools.islice(container.decode(stream), limit)]
        return frames, float(stream.guessed_rate or 0)
