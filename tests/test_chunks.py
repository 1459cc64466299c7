"""Chunk planning, stitching, colour matching and seam metrics: pure, table-driven."""
import numpy as np
import pytest

from renderer.chunks import (
    FRAME_LAYOUT,
    Chunk,
    LatentLayout,
    blend_weights,
    colour_match,
    plan_chunks,
    seam_metrics,
    stitch,
)

PLANS = [  # (N, W, O) -> chunk ranges
    ((40, 16, 4), [(0, 16), (12, 28), (24, 40)]),  # the worked example: an exact fit
    ((30, 16, 4), [(0, 16), (12, 28), (14, 30)]),  # remainder: the last chunk is aligned to the end
    ((16, 16, 4), [(0, 16)]),  # exactly one window
    ((10, 16, 4), [(0, 10)]),  # N < W: one short chunk
    ((32, 16, 0), [(0, 16), (16, 32)]),  # no overlap
    ((100, 25, 5), [(0, 25), (20, 45), (40, 65), (60, 85), (75, 100)]),
    ((25, 16, 8), [(0, 16), (8, 24), (9, 25)]),  # the last chunk overlaps two others
    ((17, 16, 15), [(0, 16), (1, 17)]),  # the largest overlap allowed
    ((40, 14, 1), [(0, 14), (13, 27), (26, 40)]),  # chained: each chunk starts on the previous one's last frame
]


@pytest.mark.parametrize("args, ranges", PLANS, ids=[str(a) for a, _ in PLANS])
def test_plan(args, ranges):
    chunks = plan_chunks(*args)
    assert [(c.start, c.end) for c in chunks] == ranges
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.frames == min(args[0], args[1]) for c in chunks)


# a diffusion transformer's VAE: 4 frames per latent frame, the first alone (Wan, CogVideoX, HunyuanVideo)
CAUSAL4 = LatentLayout(frame_axis=1, temporal=4, causal_first=True)
LAYOUTS = [  # (layout, frames) -> (latent frames, valid, the rule as an error names it)
    ((FRAME_LAYOUT, 40), (40, True, "a multiple of 1")),
    ((CAUSAL4, 81), (21, True, "4k+1 (5, 9, ...)")),
    ((CAUSAL4, 80), (20, False, "4k+1 (5, 9, ...)")),
    ((LatentLayout(temporal=8, causal_first=True), 161), (21, True, "8k+1 (9, 17, ...)")),
    ((LatentLayout(temporal=2), 16), (8, True, "a multiple of 2")),
    ((LatentLayout(temporal=2), 15), (7, False, "a multiple of 2")),
]


@pytest.mark.parametrize("args, expected", LAYOUTS, ids=[f"{a[0].temporal}-{a[1]}" for a, _ in LAYOUTS])
def test_latent_layout_counts_frames(args, expected):
    layout, frames = args
    assert (layout.latent_frames(frames), layout.valid_frames(frames), layout.frame_rule()) == expected


LATENT_PLANS = [  # (N, W, O, layout) -> (video spans, latent spans)
    # one latent frame per video frame: the latent plan is the video plan
    ((40, 16, 4, FRAME_LAYOUT), ([(0, 16), (12, 28), (24, 40)], [(0, 16), (12, 28), (24, 40)])),
    # causal 4x: 161 frames are 41 latent frames, windows of 21, overlap 20 frames -> 5 latent frames
    ((161, 81, 20, CAUSAL4), ([(0, 81), (64, 145), (80, 161)], [(0, 21), (16, 37), (20, 41)])),
    # 2x without a causal frame: 8 latent frames, windows of 4, an overlap of 2 frames is 1 latent frame
    ((16, 8, 2, LatentLayout(temporal=2)), ([(0, 8), (6, 14), (8, 16)], [(0, 4), (3, 7), (4, 8)])),
]


@pytest.mark.parametrize("args, spans", LATENT_PLANS, ids=[str(a[:3]) for a, _ in LATENT_PLANS])
def test_chunks_are_planned_in_latent_frames(args, spans):
    chunks = plan_chunks(*args)
    assert ([(c.start, c.end) for c in chunks], [(c.latent_start, c.latent_end) for c in chunks]) == spans
    layout = args[3]
    assert all(layout.valid_frames(c.frames) for c in chunks)
    assert [c.in_latents() for c in chunks] == [Chunk(c.index, c.latent_start, c.latent_end) for c in chunks]


@pytest.mark.parametrize("overlap", [16, 20, -1])
def test_overlap_must_be_smaller_than_the_window(overlap):
    with pytest.raises(ValueError, match="overlap"):
        plan_chunks(40, 16, overlap)


@pytest.mark.parametrize("args", [a for a, _ in PLANS])
def test_stitch_of_consistent_chunks_is_the_original(args):
    video = np.random.default_rng(0).random((args[0], 4, 4, 3)).astype(np.float32)
    chunks = plan_chunks(*args)
    assert all((w > 0).all() for w in blend_weights(chunks))
    assert np.allclose(stitch(chunks, [video[c.start:c.end] for c in chunks]), video, atol=1e-6)


def test_stitch_ramps_across_the_overlap():
    chunks = (Chunk(0, 0, 6), Chunk(1, 3, 9))
    out = stitch(chunks, [np.zeros((6, 1), np.float32), np.ones((6, 1), np.float32)])
    assert out.shape == (9, 1)
    assert np.allclose(out[:, 0], [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1])


def test_stitch_keeps_uint8_frames_uint8():
    chunks = plan_chunks(12, 8, 4)
    parts = [np.full((8, 2, 2, 3), 10, np.uint8), np.full((8, 2, 2, 3), 250, np.uint8)]
    out = stitch(chunks, parts)
    assert out.dtype == np.uint8 and out.shape == (12, 2, 2, 3)
    assert out[0, 0, 0, 0] == 10 and out[-1, 0, 0, 0] == 250 and 10 < out[5, 0, 0, 0] < 250


def test_stitch_refuses_a_chunk_of_the_wrong_length():
    with pytest.raises(ValueError, match="chunk 1 has 3 frames, planned 8"):
        stitch(plan_chunks(12, 8, 4), [np.zeros((8, 1)), np.zeros((3, 1))])


def test_colour_match_moves_mean_and_spread_to_the_reference():
    rng = np.random.default_rng(2)
    reference = rng.integers(60, 200, (4, 8, 8, 3)).astype(np.uint8)
    drifted = np.clip(reference.astype(int) * 0.7 + 50, 0, 255).astype(np.uint8)  # washed out and brighter
    matched = colour_match(drifted, reference)
    assert matched.dtype == np.uint8
    assert np.abs(matched.mean(axis=(0, 1, 2)) - reference.mean(axis=(0, 1, 2))).max() < 1.0
    assert np.abs(matched.std(axis=(0, 1, 2)) - reference.std(axis=(0, 1, 2))).max() < 1.0
    assert np.abs(drifted.mean(axis=(0, 1, 2)) - reference.mean(axis=(0, 1, 2))).max() > 10


def test_seam_metrics_score_a_cut_far_above_ordinary_motion():
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.integers(-2, 3, (32, 8, 8, 3)), axis=0) + 128
    chunks = plan_chunks(32, 16, 0)
    cut = smooth.copy()
    cut[16:] += 60  # a jump in brightness at the seam
    ordinary = seam_metrics(np.clip(smooth, 0, 255).astype(np.uint8), chunks)
    broken = seam_metrics(np.clip(cut, 0, 255).astype(np.uint8), chunks)
    assert 0.5 < ordinary["seams"][0] < 2 and broken["seams"][0] > 10
    assert ordinary["drift"][0] == 0.0 and broken["drift"][1] > ordinary["drift"][1] + 10


def test_seam_metrics_see_a_jump_at_either_edge_of_an_overlap():
    video = np.full((24, 4, 4, 3), 100, np.uint8)
    video += (np.arange(24) % 2).astype(np.uint8)[:, None, None, None]  # ordinary motion: one grey level a frame
    chunks = plan_chunks(24, 16, 8)  # [0,16) and [8,24): the overlap runs over frames 8..15
    jumped = video.copy()
    jumped[16:] += 40  # the jump where the first chunk stops counting
    assert seam_metrics(video, chunks)["seams"][0] == pytest.approx(1.0)
    assert seam_metrics(jumped, chunks)["seams"][0] > 20


def test_windows_between_keyframes_share_exactly_one_frame_and_their_keyframes_latent_frame():
    from renderer.chunks import join_at_keyframes, keyframe_chunks, plan_keyframe_windows

    ltx = LatentLayout(frame_axis=1, temporal=8, causal_first=True, spatial=32)
    windows = plan_keyframe_windows(41, 17, ltx)
    # the last window is as long as what is left: 9 frames, a valid 8k+1 count
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in windows] == [(0, 17, 0, 3), (16, 33, 2, 5),
                                                                                 (32, 41, 4, 6)]
    assert [(k.start, k.latent_start) for k in keyframe_chunks(windows, ltx)] == [(0, 0), (16, 2), (32, 4), (40, 5)]
    assert all(ltx.valid_frames(c.frames) for c in windows)
    parts = [np.full((c.frames, 1), c.index) for c in windows]
    joined = join_at_keyframes(windows, parts)
    # 41 frames; a shared keyframe comes from the earlier window
    assert len(joined) == 41 and joined[16, 0] == 0 and joined[17, 0] == 1 and joined[32, 0] == 1
    assert [c.frames for c in plan_keyframe_windows(17, 17, ltx)] == [17]
