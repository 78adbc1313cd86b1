"""A tiny LightningModule + DataModule that the sweep tests fit through ``python -m vasa3d fit``.

Linear regression on fixed random data; validation logs ``val/loss`` and ``val/psnr`` (of the
prediction against the target, just to have a higher-is-better metric) to the logger.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class ToyData(L.LightningDataModule):
    """Fixed random regression data.

    Args:
        num_samples: samples in the train and the validation set each.
        batch_size: samples per batch.
    """

    def __init__(self, num_samples: int = 64, batch_size: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(num_samples, 4, generator=generator)
        targets = inputs @ torch.tensor([[0.5], [-0.25], [0.1], [0.3]]) * 0.5 + 0.5
        self.dataset = TensorDataset(inputs, targets)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)


class ToyModule(L.LightningModule):
    """A linear layer fitted by SGD.

    Args:
        lr: learning rate.
    """

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.linear(inputs), targets)
        self.log("train/loss", loss)
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        inputs, targets = batch
        mse = torch.nn.functional.mse_loss(self.linear(inputs), targets)
        self.log(f"{stage}/loss", mse)
        self.log(f"{stage}/psnr", -10.0 * torch.log10(mse + 1e-10))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
