"""`convnets analyze invariance`: Zeiler & Fergus 2013, Figure 5 (and the lecture slides' three slides on it).

For each transform (vertical translation, scale, rotation) and each magnitude, every sampled image
is transformed; per tapped layer the normalized distance ||f(x) - f(T x)|| / ||f(x)|| and the
probability of the true class are averaged over the images. Magnitude 0 (the identity) is always
included: distance 0 and the plain centre-crop P(true class) there.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from convnets.platform.analysis.common import (
    AnalyzeConfig,
    centre_crops,
    choose_layers,
    features,
    load_setup,
    output_folder,
    publish,
    tapped_layers,
)
from convnets.platform.evaluation import plots as eval_plots
from convnets.utils.figures import plt, save_figure
from convnets.utils.tables import markdown_table

# name -> (magnitudes, unit); translation in fractions of the image height (ZF: -60..60 px of 224)
TRANSFORMS: dict[str, tuple[np.ndarray, str]] = {
    "vertical translation": (np.round(np.linspace(-0.25, 0.25, 11), 4), "fraction of the image height"),
    "scale": (np.round(np.linspace(0.6, 1.4, 9), 4), "scale factor"),
    "rotation": (np.arange(0, 361, 30).astype(float), "degrees"),
}


def transform(images: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """One transform of a (N, C, H, W) batch about the centre; uncovered pixels are 0 (the mean colour)."""
    if name == "vertical translation":
        return TF.affine(images, angle=0.0, translate=[0, round(value * images.shape[-2])], scale=1.0, shear=[0.0])
    if name == "scale":
        return TF.affine(
            images,
            angle=0.0,
            translate=[0, 0],
            scale=float(value),
            shear=[0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
    return TF.rotate(images, float(value), interpolation=TF.InterpolationMode.BILINEAR)


def default_layers(net) -> list[str]:
    """ZF's layer 1 and layer 7: the first layer and the last hidden one (the one before the output)."""
    names = list(tapped_layers(net))
    return [names[0], names[-2]] if len(names) > 2 else names


@torch.no_grad()
def invariance_curves(module, images: torch.Tensor, labels: torch.Tensor, layers, *, batch: int) -> dict:
    """{transform: {magnitudes, unit, distance: {layer: [...]}, p_true: [...], top1: [...]}}."""
    base, _ = features(module, images, layers, batch=batch)
    norms = {n: f.norm(dim=1).clamp_min(1e-12) for n, f in base.items()}
    out = {}
    for name, (values, unit) in TRANSFORMS.items():
        dist = {n: [] for n in layers}
        p_true, top1 = [], []
        for v in values:
            feats, logits = features(module, transform(images, name, v), layers, batch=batch)
            for n, f in feats.items():
                dist[n].append(float(((f - base[n]).norm(dim=1) / norms[n]).mean()))
            probs = logits.softmax(-1)
            p_true.append(float(probs.gather(1, labels[:, None]).mean()))
            top1.append(float((probs.argmax(-1) == labels).double().mean()))
        out[name] = {"magnitudes": values.tolist(), "unit": unit, "distance": dist, "p_true": p_true, "top1": top1}
    return out


def plot_invariance(curves: dict, layers: list[str], path):
    """Rows: one per layer (normalized distance), then P(true class); columns: the transforms."""
    rows = len(layers) + 1
    fig, axes = plt.subplots(rows, len(curves), figsize=(4.2 * len(curves), 2.8 * rows), squeeze=False)
    for c, (name, cur) in enumerate(curves.items()):
        x = np.asarray(cur["magnitudes"])
        for r, layer in enumerate(layers):
            eval_plots.curves(
                x,
                {layer: np.asarray(cur["distance"][layer])},
                xlabel=cur["unit"],
                ylabel="||f(x) - f(Tx)|| / ||f(x)||",
                title=f"{name}: {layer}",
                ax=axes[r, c],
            )
        eval_plots.curves(
            x,
            {"P(true class)": np.asarray(cur["p_true"]), "top-1": np.asarray(cur["top1"])},
            xlabel=cur["unit"],
            ylabel="probability",
            title=f"{name}: output",
            ax=axes[-1, c],
        )
        axes[-1, c].set_ylim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path)


def run_invariance(cfg: AnalyzeConfig) -> dict:
    ckpt, module, dm = load_setup(cfg)
    layers = choose_layers(module.net, cfg.layers, default_layers(module.net))
    images, labels = centre_crops(dm, dm.test_split_name, cfg.samples)
    curves = invariance_curves(module, images, labels, layers, batch=cfg.batch)
    out = output_folder(cfg, ckpt, "invariance")
    png = plot_invariance(curves, list(layers), out / "plots" / "invariance.png")
    rows = []
    for name, cur in curves.items():
        m = cur["magnitudes"]
        shown = [0.0, 90.0, 180.0] if name == "rotation" else [m[0], 1.0 if name == "scale" else 0.0, m[-1]]
        for i in [m.index(v) for v in shown if v in m]:
            rows.append(
                [
                    name,
                    f"{cur['magnitudes'][i]:g}",
                    *[f"{cur['distance'][n][i]:.3f}" for n in layers],
                    f"{cur['p_true'][i]:.3f}",
                ]
            )
    table = markdown_table(["transform", "magnitude", *[f"distance {n}" for n in layers], "P(true)"], rows)
    summary = {
        name: {"p_true_min": min(c["p_true"]), **{f"distance_max_{n}": max(c["distance"][n]) for n in layers}}
        for name, c in curves.items()
    }
    result = {
        "analysis": "invariance",
        "ckpt": str(cfg.ckpt),
        "arch": ckpt.hparams["arch"],
        "split": dm.test_split_name,
        "n": len(images),
        "layers": list(layers),
        "curves": curves,
        "table": table,
        "summary": summary,
    }
    publish(cfg, ckpt, out, "invariance", result, {"invariance": png})
    return result
