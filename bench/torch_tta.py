"""Images/s of torch test-time adaptation on CPU against plain inference of the same model.

Model: the example CNN (``streamweights.adapters.torch.examples.small_cnn``, ~20k
parameters) trained on scikit-learn's bundled digits (8x8 grey images); stream: the
held-out digits under Gaussian noise, severity 3, class-correlated (``tests/torch/digits``).
Both contenders run in the same process on the same images, one after the other,
``--repeats`` times; the best time of each is kept (the least disturbed by other work).

* ceiling — plain inference: ``model(x)`` and softmax, no gradient, batches of
  ``--batch`` (and, on its own line, one image at a time);
* ``TestTimeAdapter.predict_observe_many`` — serve each batch and observe it: teacher
  forward, the un-adapted anchor's forward for the agreement check, the typicality
  statistics, memory insertion, and every ``--update-every`` images an adaptation step
  (teacher, anchor and student forwards on the 64-item memory, one backward, Adam, EMA);
* ``KalmanHead`` — one label learned (penultimate features read once in a batch before
  timing, then one O(d²) filter update per label), labels/s.

Memory: resident set size (``VmRSS``) before building the adapter and after the run,
and the exact bytes the adapter holds in tensors and memory items (its state).

    .venv/bin/python bench/torch_tta.py [--threads 1] [--batch 64] [--update-every 64]
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch

from streamweights.adapters.torch import KalmanHead, TestTimeAdapter
from tests.torch import digits


def rss_bytes() -> int:
    gc.collect()
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def state_bytes(tree) -> int:
    if isinstance(tree, np.ndarray):
        return tree.nbytes
    if isinstance(tree, dict):
        return sum(state_bytes(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return sum(state_bytes(v) for v in tree)
    return 0


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--update-every", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    train_x, train_y, test_x, test_y = digits.load_split(seed=0)
    model = digits.train_model(train_x, train_y, seed=0)
    images, labels = digits.corrupted_stream(test_x, test_y, "gaussian_noise", (3, 3, 3),
                                             seed=1)
    batches = [torch.from_numpy(images[i:i + args.batch])
               for i in range(0, len(images), args.batch)]
    n = len(images)

    def plain_batched() -> None:
        with torch.no_grad():
            for batch in batches:
                torch.softmax(model(batch), dim=1)

    def plain_single() -> None:
        with torch.no_grad():
            for index in range(n):
                torch.softmax(model(torch.from_numpy(images[index:index + 1])), dim=1)

    before = rss_bytes()
    adapters: list[TestTimeAdapter] = []

    def adapt() -> None:
        adapter = TestTimeAdapter(model, 10, (1, 8, 8), update_every=args.update_every)
        adapters.append(adapter)
        for batch in batches:
            adapter.predict_observe_many(batch)

    ceiling = best_time(plain_batched, args.repeats)
    single = best_time(plain_single, 1)
    adapting = best_time(adapt, args.repeats)
    after = rss_bytes()
    adapter = adapters[-1]
    held = state_bytes(adapter.state_dict()["state"])

    head = KalmanHead(model, 10, (1, 8, 8))
    features = head.features(images)

    def learn_labels() -> None:
        fresh = KalmanHead(model, 10, (1, 8, 8))
        for index in range(n):
            fresh.learn_features(features[index:index + 1], [int(labels[index])])

    kalman = best_time(learn_labels, args.repeats)
    result = {
        "threads": args.threads, "batch": args.batch, "update_every": args.update_every,
        "images": n, "updates": adapter.n_updates_,
        "plain_inference_images_per_s": n / ceiling,
        "plain_inference_single_images_per_s": n / single,
        "test_time_adaptation_images_per_s": n / adapting,
        "ratio_adaptation_to_inference": ceiling / adapting,
        "kalman_head_labels_per_s": n / kalman,
        "rss_increase_mib": (after - before) / 2**20,
        "adapter_state_kib": held / 1024,
        "model_parameters_kib": sum(p.numel() * p.element_size()
                                    for p in model.parameters()) / 1024,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{n} images, batch {args.batch}, {args.threads} thread(s), update every "
          f"{args.update_every} ({adapter.n_updates_} adaptation steps)")
    print(f"  plain inference (ceiling)      {result['plain_inference_images_per_s']:10.0f} "
          "images/s")
    print(f"  plain inference, one at a time {result['plain_inference_single_images_per_s']:10.0f}"
          " images/s")
    print(f"  TestTimeAdapter                {result['test_time_adaptation_images_per_s']:10.0f}"
          f" images/s  = {result['ratio_adaptation_to_inference']:.3f} of the ceiling")
    print(f"  KalmanHead                     {result['kalman_head_labels_per_s']:10.0f} labels/s")
    print(f"  memory: RSS +{result['rss_increase_mib']:.1f} MiB over the run; adapter state "
          f"{result['adapter_state_kib']:.0f} KiB (model parameters "
          f"{result['model_parameters_kib']:.0f} KiB)")


if __name__ == "__main__":
    main()
