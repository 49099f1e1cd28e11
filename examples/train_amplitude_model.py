"""A PtychoPINN-style amplitude model trained with the scaled Poisson likelihood.

The network sees normalized diffraction amplitudes ``X`` and predicts
normalized amplitudes. The physics scale lives only at the boundary, in a
trainable :class:`physscale.nn.IntensityScaler` (TF convention: the input
``s * X`` is divided by ``exp(log_scale)``; the output is multiplied by it
and squared to give the predicted photon-count rate). After a few training
steps the weights and the *trained* scale are saved in one bundle, reloaded,
and used for inference on brighter data without re-deriving anything.

Run:  python examples/train_amplitude_model.py [--steps 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import physscale as ps
from physscale.io import (
    example_dataset_path,
    iter_patterns,
    load_bundle,
    read_metadata,
    save_bundle,
)
from physscale.nn import IntensityScaler


def load_training_container() -> dict[str, object]:
    """The shipped example: (64, 1, 64, 64) normalized amplitudes plus their metadata."""
    path = example_dataset_path()
    x = np.concatenate(list(iter_patterns(path, key="diffraction")))
    return {"X": torch.from_numpy(x).unsqueeze(1), "metadata": read_metadata(path)}


class AmplitudeNet(nn.Module):
    """A tiny conv net between an IntensityScaler's normalize and denormalize."""

    def __init__(self, record: ps.ScaleRecord, trainable: bool = True) -> None:
        super().__init__()
        self.scaler = IntensityScaler.from_record(record, trainable=trainable)
        self.data_scale: torch.Tensor
        # The data's own (fixed) scale turns normalized X into physical s * X.
        self.register_buffer("data_scale", torch.tensor(record.intensity_scale))
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 1, 3, padding=1),
            nn.Softplus(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) normalized amplitudes -> (B, 1, H, W) normalized amplitudes."""
        return self.body(self.scaler.normalize(x * self.data_scale))

    def physical_amplitudes(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted amplitudes in photon units, sqrt(counts): the physics boundary."""
        return self.scaler.denormalize(self(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="folder for the bundle")
    args = parser.parse_args()
    torch.manual_seed(0)

    # 1. Attach the scale to the training data: nphotons from its metadata, derived once.
    train = load_training_container()
    record = ps.attach_intensity_scale(train, data_source="example_diffraction.npz")
    print(
        f"derived scale {record.intensity_scale:.6g} for nphotons={record.nphotons:g} "
        f"(from {record.nphotons_source}) over {record.n_patterns} patterns"
    )

    # 2. Train a few steps: the loss compares the predicted rate (trainable scale) with
    #    the observed counts (the data's fixed scale), mean over elements as in Keras.
    model = AmplitudeNet(record, trainable=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_train = train["X"]
    assert isinstance(x_train, torch.Tensor)
    loader = DataLoader(TensorDataset(x_train), batch_size=16, shuffle=True)
    losses: list[float] = []
    step = 0
    while step < args.steps:
        for (x,) in loader:
            loss = ps.scaled_poisson_nll(
                model(x), x, model.scaler.scale, count_scale=record, form="deviance"
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step == args.steps:
                break
    trained = model.scaler.to_record()
    print(f"loss {losses[0]:.6g} -> {losses[-1]:.6g} in {len(losses)} steps")
    print(
        f"trained scale {trained.intensity_scale:.6g} "
        f"(started at {trained.initial_intensity_scale:.6g}, method={trained.method})"
    )

    # 3. Save the weights and the trained record together; reload for inference.
    out = args.out or Path(tempfile.mkdtemp(prefix="physscale-example-"))
    path = save_bundle(
        out / "amplitude_model.physscale.zip",
        model.state_dict(),
        trained,
        model="AmplitudeNet",
        steps=len(losses),
    )
    bundle = load_bundle(path)
    restored = AmplitudeNet(bundle.record, trainable=False)
    restored.load_state_dict(bundle.state_dict)
    restored.eval()

    # Inference data ten times brighter: its own derived scale would differ by
    # sqrt(10), but inference uses the stored scale and never re-derives.
    bright = x_train[:8] * math.sqrt(10.0)
    with torch.no_grad():
        a = restored.physical_amplitudes(bright)
        b = model.physical_amplitudes(bright)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), "reloaded model differs"
    assert math.isclose(restored.scaler.scale.item(), trained.intensity_scale, rel_tol=1e-6)
    own = float(ps.derive_intensity_scale(bright, record.nphotons))
    print(
        f"bundle {path.name}: inference scale {restored.scaler.scale.item():.6g} "
        f"(the bright data alone would derive {own:.6g}); reloaded outputs match"
    )


if __name__ == "__main__":
    main()
