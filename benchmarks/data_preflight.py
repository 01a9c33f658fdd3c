"""Cost of a run's pre-flight data check (adapt.data.validate), on the demo and on synthetic splits.

    python benchmarks/data_preflight.py                      # demo + 200 images at 640x640 and 4000x3000
    python benchmarks/data_preflight.py --sizes 640x640 --count 1000

For each set: opening the split (annotation file validated, boxes fixed, every image header read),
the pre-flight decode (`check_images`: JPEG draft decode, threads), and for comparison a full
decode of every image as training does (`read_image`, one thread). Synthetic images are smooth
noise saved as JPEG quality 90, which decodes slower than most photographs (more entropy).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from adapt.data import build_task
from adapt.data.io import read_image
from adapt.data.validate import check_images
from adapt.runs.results import machine_info


def _timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synthetic_task(root: Path, size: tuple[int, int], count: int):
    import json

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(count):
        small = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(root / f"{i}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        anns.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500}
        )
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "test.json").write_text(json.dumps(data))
    return build_task(
        {"id": "synthetic", "data_root": str(root), "test_json": "test.json", "val_json": "test.json"}
    )


def measure(name: str, open_splits, reps: int) -> list:
    splits = open_splits()
    images = check_images(splits, threads=1).images
    paths = sorted({ds.image_path(i) for ds in splits for i in range(len(ds))})
    t_open = _timed(open_splits, reps)
    t_one = _timed(lambda: check_images(splits, threads=1), reps)
    t_pool = _timed(lambda: check_images(splits), reps)
    t_full = _timed(lambda: [read_image(p) for p in paths], reps)
    ms = [f"{t * 1e3:.0f}" for t in (t_open, t_one, t_pool, t_full)]
    return [name, images, *ms, f"{t_one / images * 1e3:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["640x640", "4000x3000"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(machine_info())
    columns = ["set", "images", "open splits (ms)", "decode, 1 thread (ms)", "decode, pool (ms)"]
    columns += ["full decode (ms)", "ms / image"]
    from adapt.config import compose_config
    from adapt.markdown import md_table

    cfg = compose_config()

    def demo_splits():
        task = build_task(cfg.task)
        return [task.dataset("train", 5, 3), task.dataset("val", 5, 3), task.dataset("test")]

    rows = [measure("demo (train 5-shot, val 5-shot, test)", demo_splits, args.reps)]
    for text in args.sizes:
        w, h = (int(v) for v in text.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            task = _synthetic_task(Path(tmp), (w, h), args.count)
            reps = max(1, args.reps - 2)
            rows.append(
                measure(f"{args.count} JPEGs {w}x{h}", lambda task=task: [task.dataset("test")], reps)
            )
    print("\n".join(md_table(columns, rows, "lrrrrrr")))


if __name__ == "__main__":
    main()
