"""Throughput of on-the-fly corruption: 224×224 images, all 19 corruptions at one severity, per number of workers.

    OMP_NUM_THREADS=1 python -m benchmarks.corruption_workers --images 24 --workers 0 1 2

Each image is the embedded digits resized to 224×224 by a ViT image processor; an "image" counts once when
all 19 corruptions of it are made (``nullspace_hf.evaluation.corrupt_dataset``, the evaluation's own
DataLoader path). numba compiles glass_blur in the parent first, so that no worker pays for it, and OpenCV
runs one thread per process (its default pool would make even 0 workers use every core). Prints one
line per number of workers: seconds, images per second, and whether the images equal those of the first
setting.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from transformers import ViTImageProcessor

from nullspace_hf.data import digits_dataset
from nullspace_hf.evaluation import CORRUPTIONS, corrupt_dataset, corrupt_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # inherited by the forked workers
    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    dataset = digits_dataset()["test"].select(range(args.images))
    for name in CORRUPTIONS:  # numba's one-off compilation, and the libraries' imports, outside the timings
        corrupt_pixels(torch.rand(1, 3, 224, 224), name, args.severity, [0])
    first = None
    for workers in args.workers:
        started = time.perf_counter()
        images = corrupt_dataset(dataset, processor, CORRUPTIONS, [args.severity], batch_size=args.batch_size,
                                 workers=workers)
        seconds = time.perf_counter() - started
        same = first is None or all(np.array_equal(images[key], first[key]) for key in first)
        first = first or images
        print(f"workers={workers}: {seconds:.1f} s for {args.images} images × 19 corruptions at severity "
              f"{args.severity}: {args.images / seconds:.2f} images/s; identical images: {same}", flush=True)


if __name__ == "__main__":
    main()
