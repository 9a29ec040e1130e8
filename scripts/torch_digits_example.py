"""Write the inputs of ``configs/torch-digits.yaml``: a trained digits CNN and a stream.

Trains the example CNN on the clean half of scikit-learn's bundled digits (a few
seconds on CPU), saves its state dict, and writes a JSONL stream of prediction records
whose ``features`` are the held-out digits under Gaussian noise then blur (each part
in random order), with each label 50 records later. Needs the test extras
(scikit-learn) and the torch extra.

    .venv/bin/python scripts/torch_digits_example.py [--out torch-example]
    .venv/bin/streamweights run --config configs/torch-digits.yaml
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import orjson

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch

from tests.torch import digits

LABEL_DELAY = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="torch-example")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    train_x, train_y, test_x, test_y = digits.load_split(seed=0)
    model = digits.train_model(train_x, train_y, seed=0)
    torch.save(model.state_dict(), out / "digits-cnn.pt")
    parts = [digits.corrupted_stream(test_x, test_y, kind, (3,), seed=5 + i)
             for i, kind in enumerate(("gaussian_noise", "blur"))]
    # Random order within each corruption: with a class-correlated order *and* late labels
    # the Kalman head follows the label mix of 50 records ago (see KalmanHead's docstring).
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(p[0])) for p in parts]
    images = np.concatenate([p[0][o] for p, o in zip(parts, orders, strict=True)])
    labels = np.concatenate([p[1][o] for p, o in zip(parts, orders, strict=True)])
    with open(out / "records.jsonl", "wb") as handle:
        for index, image in enumerate(images):
            ts = 1_700_000_000.0 + index
            handle.write(orjson.dumps({"schema": 1, "stream": "digits", "id": f"d-{index}",
                                       "ts": ts, "outputs": {},
                                       "features": image.reshape(-1).tolist()}) + b"\n")
            if index >= LABEL_DELAY:
                late = index - LABEL_DELAY
                handle.write(orjson.dumps({"schema": 1, "stream": "digits", "id": f"d-{late}",
                                           "ts": ts, "label": int(labels[late])}) + b"\n")
    print(f"wrote {out / 'digits-cnn.pt'} and {out / 'records.jsonl'} ({len(images)} images)")


if __name__ == "__main__":
    main()
