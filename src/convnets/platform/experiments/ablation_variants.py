"""The ablation study's variants: what each changes in the model, and what the papers report.

A module of its own so that the sweep (which runs them) and the table (which reports them) both
read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table: model options on top of the config, and what the papers say."""

    name: str
    options: dict[str, object]  # ClassifierModule flags (--model.KEY VALUE) = create_model options
    change: str  # what changed, in words
    reported: str = "-"  # the lecture slides' / paper's change in error for the same ablation

    @property
    def flags(self) -> list[str]:
        return [arg for key, value in self.options.items() for arg in (f"--model.{key}", _flag_value(value))]


def _flag_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# Zeiler & Fergus 2013 (their AlexNet reimplementation, 18.1% top-5 error) as quoted by the lecture slides
# slides, which do not say whether "drop in performance" is top-1 or top-5 error. Krizhevsky et al. 2012: LRN
# (section 3.3) and overlapping pooling (3.4) reduce top-1/top-5 error by 1.4/1.2 and 0.4/0.3 points.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("full", {}, "nothing (the config's model)"),
        Variant("no_fc7", {"ablate": "fc7"}, "FC7 removed", "1.1% drop in performance (lecture slides)"),
        Variant(
            "no_fc6_fc7", {"ablate": "fc6_fc7"}, "FC6 and FC7 removed", "5.7% drop in performance (lecture slides)"
        ),
        Variant(
            "no_conv3_conv4_fc6_fc7",
            {"ablate": "conv3_conv4_fc6_fc7"},
            "conv3, conv4, FC6 and FC7 removed",
            "33.5% drop in performance (lecture slides)",
        ),
        Variant(
            "lrn_off", {"norm": "none"}, "no local response normalization", "+1.4 top-1 / +1.2 top-5 (AlexNet 3.3)"
        ),
        Variant("lcn", {"norm": "lcn"}, "local contrast norm. instead of LRN"),
        Variant(
            "nonoverlap_pool",
            {"pool": "nonoverlap"},
            "2x2/2 max pooling instead of 3x3/2",
            "+0.4 top-1 / +0.3 top-5 (AlexNet 3.4)",
        ),
        Variant(
            "dropout_off", {"dropout": 0.0}, "no dropout on FC6/FC7", "overfits substantially (AlexNet 4.2; no number)"
        ),
    )
}


@dataclass(frozen=True)
class PlannedVariant:
    variant: Variant
    params: int
    commands: list[list[str]]
    state: str  # "done" (skip), "test" (fit finished earlier) or "fit"


def select_variants(names: str | None) -> list[Variant]:
    """The named variants in the order given (default: all, `full` first); ValueError on a miss."""
    if names is None:
        return list(VARIANTS.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in VARIANTS]
    if unknown or not chosen:
        raise ValueError(f"unknown variant {', '.join(unknown) or repr(names)}; valid variants: {', '.join(VARIANTS)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"--variants {names}: a variant is named twice")
    return [VARIANTS[n] for n in chosen]
