"""Run by test_ddp_guarantees.py: 2-rank gloo DDP over real shards, recording what each rank reads.

Lightning's "ddp" strategy re-executes this script for rank 1, exactly as `convnets fit` is
re-executed in real runs. Usage: python ddp_probe.py SHARD_DIR OUT_DIR EPOCHS BATCH
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from convnets.data_pipelines.loading.augment import InputSpec
from convnets.data_pipelines.loading.datamodule import ShardDataModule
from convnets.platform.training.module import masked_cross_entropy


class Probe(pl.LightningModule):
    input_spec = InputSpec(channels=1, image_size=32, mean=(0.1307,), std=(0.3081,), crop_fraction=28 / 32)

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.layer = torch.nn.Linear(32 * 32, 10)
        self.seen: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        per_epoch = self.seen.setdefault(self.current_epoch, [])
        per_epoch.append(batch["index"][batch["valid"]].tolist())
        logits = self.layer(batch["images"].flatten(1))
        return masked_cross_entropy(logits, batch["labels"], batch["valid"])

    def on_train_end(self) -> None:
        record = {"rank": self.global_rank, "world_size": self.trainer.world_size, "seen": self.seen}
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(record))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    shards, out, epochs, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    data = ShardDataModule(data_dir=str(shards), batch_size=batch, num_threads=1, preset="pad", seed=3)
    trainer.fit(Probe(out), datamodule=data)


if __name__ == "__main__":
    main()
