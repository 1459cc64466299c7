"""Renders the full-size random presets once through `render run` on a GPU and prints the per-row times.

    python bench/gpu_smoke.py OUT_DIR      (writes OUT_DIR/table.parquet, OUT_DIR/run/, OUT_DIR/smoke.json)
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
Image.fromarray((np.random.default_rng(0).random((576, 1024, 3)) * 255).astype(np.uint8)).save(out / "cond.png")
rows = [  # the GPU.md baseline workloads, each twice (the first row of a model pays warm-up)
    *[dict(id=f"svd-xt-{i}", model="random-svd-xt", image="cond.png", prompt=None,
           params='{"decode_chunk_size": 8}') for i in range(2)],
    *[dict(id=f"animatediff-{i}", model="random-animatediff", image=None, prompt="a cat walking",
           params=None) for i in range(2)],
]
pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
start = time.perf_counter()
code = subprocess.call([sys.executable, "-m", "jobs.cli", "run", str(out / "table.parquet"), "--out", str(out / "run"),
                        "--device", "cuda"])
wall = time.perf_counter() - start
records = pq.read_table(out / "run" / "metadata.parquet").to_pylist()
for r in records:
    print(f"{r['id']:16} {r['status']:8} {r['seconds'] or 0:7.2f} s  {r['num_frames']} frames {r['width']}x{r['height']} "
          f"{r['gpu']} {r['error'] or ''}")
print(f"exit {code}, wall {wall:.1f} s (includes Ray start and model builds)")
(out / "smoke.json").write_text(json.dumps({"exit": code, "wall_s": wall, "records": records}, indent=1, default=str))
