"""Writes the bundled example table (examples/example.parquet) and its conditioning images.

Run from anywhere: python examples/make_example.py
"""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def draw(name: str, sky, sun) -> str:
    """A small synthetic landscape: sky gradient, ground and a sun."""
    h, w = 64, 64
    ramp = np.linspace(0, 1, h)[:, None, None]
    pixels = (np.array(sky) * (1 - ramp) + np.array([40, 110, 60]) * ramp).repeat(w, axis=1)
    img = Image.fromarray(pixels.astype(np.uint8))
    ImageDraw.Draw(img).ellipse((36, 8, 52, 24), fill=sun)
    img.save(HERE / "images" / name)
    return f"images/{name}"


def main():
    (HERE / "images").mkdir(exist_ok=True)
    rows = [
        dict(id="fox-in-snow", prompt="a red fox trotting through fresh snow, golden hour", model="tiny-animatediff"),
        dict(id="ocean-waves", prompt="slow waves rolling onto a black sand beach", model="tiny-animatediff",
             negative_prompt="blurry, low quality", num_frames=12, params='{"scheduler": "euler"}'),
        dict(id="sunrise", image=draw("sunrise.png", [250, 170, 90], (255, 240, 200)), model="tiny-svd",
             params='{"motion_bucket_id": 127, "noise_aug_strength": 0.02}'),
        dict(id="dusk", image=draw("dusk.png", [60, 60, 140], (255, 200, 120)), model="tiny-svd", fps=6),
    ]
    columns = ["id", "prompt", "negative_prompt", "image", "model", "num_frames", "fps", "params"]
    table = pa.table({c: [r.get(c) for r in rows] for c in columns},
                     schema=pa.schema([("id", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
                                       ("image", pa.string()), ("model", pa.string()), ("num_frames", pa.int64()),
                                       ("fps", pa.int64()), ("params", pa.string())]))
    pq.write_table(table, HERE / "example.parquet")
    print(f"wrote {HERE / 'example.parquet'} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
