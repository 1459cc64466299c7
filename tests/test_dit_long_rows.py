"""Long rows of the diffusion-transformer families over Ray: anchored chunks stitched as latents (Wan, LTX) and
chained image-to-video chunks (Wan I2V) render exactly num_frames, with finite seam metrics, and the same frames
whether one actor renders every chunk or two share them."""
import numpy as np
import pytest
from PIL import Image

from conftest import write_table
from invariants import check_invariants
from renderer.run import RunConfig, run
from renderer.testing.videos import read_mp4

# 128x128: x264 encodes frames this size the same every time (not 64x64), so two runs' files can be compared
SIZE = dict(height=128, width=128, num_inference_steps=2)
CASES = {
    # 97 frames in windows of 81: two anchored chunks, 25 latent frames
    "wan": dict(model="tiny-wan", prompt="a red kite over a beach", num_frames=97),
    # 33 frames in windows of 17 (8k+1): two anchored chunks
    "ltx": dict(model="tiny-ltx", prompt="a lighthouse at dusk", num_frames=33, params='{"chunk_window": 17}'),
    # 17 frames in windows of 9: the second chunk starts from the first one's last frame
    "wan-i2v": dict(model="tiny-wan-i2v", prompt="a kite", image="first.png", num_frames=17,
                    params='{"chunk_window": 9}'),
}
MODES = {"wan": "anchored", "ltx": "anchored", "wan-i2v": "chain"}


@pytest.mark.parametrize("case", CASES)
def test_a_long_row_renders_the_same_frames_on_one_actor_or_two(ray_session, tmp_path, case):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(
        tmp_path / "first.png")
    table = str(write_table(tmp_path / "t.parquet", [dict(id="long", **CASES[case], **SIZE)]))
    videos = {}
    for actors in (1, 2):
        out = tmp_path / f"out{actors}"
        # one thread per actor either way: the thread count changes the order of float sums
        summary = run(RunConfig(tables=(table,), out=out, actors=actors, threads_per_actor=1))
        record = check_invariants(out, ["long"], summary.exit_code)["long"]
        assert summary.counts == {"ok": 1}
        assert (record["chunks"], record["chunk_mode"]) == (2, MODES[case])
        assert len(record["seams"]) == 1 and np.isfinite(record["seams"]).all()
        videos[actors] = read_mp4(out / record["video_path"])[0]
    assert videos[1].shape == (CASES[case]["num_frames"], 128, 128, 3)
    assert np.array_equal(videos[1], videos[2])
