"""`convnets analyze layers`: a linear classifier on each layer's frozen features (ZF 2013, section 5.2).

Features: each tapped layer's output, conv maps average-pooled to 2 x 2 (so conv1's 48-96 maps give
192-384 numbers and the probe sees coarse layout, not just channel means), standardized with the
training sample's mean and std. The probe is multinomial logistic regression (L2 1e-4) fitted by
L-BFGS on the whole training sample (deterministic: no shuffling, no learning rate to tune).
"""

from __future__ import annotations

import numpy as np
import torch

from convnets.platform.analysis.common import (
    AnalyzeConfig,
    centre_crops,
    choose_layers,
    features,
    load_setup,
    output_folder,
    publish,
)
from convnets.utils.figures import plt, save_figure
from convnets.utils.tables import markdown_table

POOL = 2  # conv maps -> POOL x POOL per channel
L2 = 1e-4
LBFGS_STEPS = 100


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.nn.Linear:
    """Logistic regression on standardized features (full batch, L-BFGS)."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], num_classes).double()
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + L2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


@torch.no_grad()
def accuracy(probe: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((probe(x).argmax(-1) == y).double().mean())


def probe_layers(
    train: dict[str, torch.Tensor],
    y_train: torch.Tensor,
    test: dict[str, torch.Tensor],
    y_test: torch.Tensor,
    num_classes: int,
) -> list[dict]:
    rows = []
    for name, xtr in train.items():
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
        a, b = ((xtr - mean) / std).double(), ((test[name] - mean) / std).double()
        probe = fit_probe(a, y_train, num_classes)
        rows.append(
            {
                "layer": name,
                "features": int(xtr.shape[1]),
                "train_top1": accuracy(probe, a, y_train),
                "top1": accuracy(probe, b, y_test),
            }
        )
    return rows


def plot_probes(rows: list[dict], model_top1: float, path):
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 3.6))
    x = np.arange(len(rows))
    ax.plot(x, [r["top1"] for r in rows], marker="o", label="linear probe, test")
    ax.plot(x, [r["train_top1"] for r in rows], marker=".", ls=":", label="linear probe, train")
    ax.axhline(model_top1, color="grey", ls="--", lw=1, label=f"the network itself ({model_top1:.2f})")
    ax.set_xticks(x, [r["layer"] for r in rows])
    ax.set(ylabel="top-1 accuracy", ylim=(0, 1.02), title="linear classifier on each layer's frozen features")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def run_layer_probes(cfg: AnalyzeConfig) -> dict:
    ckpt, module, dm = load_setup(cfg)
    layers = choose_layers(module.net, cfg.layers)
    x_train, y_train = centre_crops(dm, "train", cfg.train_samples)
    x_test, y_test = centre_crops(dm, dm.test_split_name, cfg.samples)
    f_train, _ = features(module, x_train, layers, batch=cfg.batch, pool=POOL)
    f_test, logits = features(module, x_test, layers, batch=cfg.batch, pool=POOL)
    model_top1 = float((logits.argmax(-1) == y_test).double().mean())
    rows = probe_layers(f_train, y_train, f_test, y_test, ckpt.hparams["num_classes"])
    out = output_folder(cfg, ckpt, "layers")
    png = plot_probes(rows, model_top1, out / "plots" / "layer_probes.png")
    table = markdown_table(
        ["layer", "features", "probe train top-1", "probe test top-1"],
        [[r["layer"], str(r["features"]), f"{r['train_top1']:.3f}", f"{r['top1']:.3f}"] for r in rows],
    )
    result = {
        "analysis": "layers",
        "ckpt": str(cfg.ckpt),
        "arch": ckpt.hparams["arch"],
        "split": dm.test_split_name,
        "n_train": len(x_train),
        "n": len(x_test),
        "pool": POOL,
        "model_top1": model_top1,
        "layers": rows,
        "table": table + f"\n\nthe network itself (centre crop): top-1 {model_top1:.3f} on {len(x_test)} images",
        "summary": {r["layer"]: r["top1"] for r in rows},
    }
    publish(cfg, ckpt, out, "layers", result, {"layer_probes": png})
    return result
