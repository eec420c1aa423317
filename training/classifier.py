"""A small digit classifier: the feature extractor behind the quality benchmark's KID.

    python -m training.classifier --out benchmarks/assets/digit_classifier.onnx

KID needs features of a network that knows the data. Inception features mean little for
32x32 digits, so we train a small CNN on the same 4,500 training digits the score network
saw (never on the held-out ones), and use its 128-d penultimate layer as features and its
softmax as the class assignment. Exported to ONNX with two outputs, `features` [B, 128]
and `probs` [B, 10], so the benchmark runs on ONNX Runtime without torch.
Input: float32 [B, 1, 32, 32] in [-1, 1], the model range.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from training.digits import load_split, to_model_range


class DigitClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.body(x))
        return features, F.softmax(self.head(features), dim=1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels: cheap robustness to off-centre outputs."""
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + 32, dx:dx + 32]


def train(epochs: int, seed: int) -> tuple[DigitClassifier, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = load_split()
    x = torch.from_numpy(to_model_range(split.train_images))
    y = torch.from_numpy(split.train_labels)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - 63, 64):
            idx = order[i:i + 64]
            _, probs = model(augment(x[idx], gen))
            loss = F.nll_loss(torch.log(probs + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        held = torch.from_numpy(to_model_range(split.held_out_images))
        _, probs = model(held)
        accuracy = (probs.argmax(1).numpy() == split.held_out_labels).mean()
    return model, float(accuracy)


def export(model: DigitClassifier, path: Path) -> None:
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 1, 32, 32),), buffer, input_names=["x"], output_names=["features", "probs"],
                      dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}, "probs": {0: "batch"}}, dynamo=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/assets/digit_classifier.onnx"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, accuracy = train(args.epochs, args.seed)
    export(model, args.out)
    print(f"held-out accuracy {accuracy:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
