"""Trainer settings: the shared ones plus the optimizer's defaults."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from modelstream.learn.sgd import GDConfig
from modelstream.settings import ServiceSettings, metrics_port_field


class TrainerSettings(ServiceSettings):
    service: ClassVar[str] = "trainer"

    trainer_metrics_port: int = metrics_port_field(9101)
    learning_rate: float = Field(default=0.05, gt=0)
    lr_decay: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=128, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=10, ge=1)
    validation_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        description="Share of rows held out to stop early (the linear family only when it "
        "holds at least 500 rows; below that it converges on all of them).",
    )
    poll_max_records: int = Field(default=5000, ge=1)

    def descent(self) -> GDConfig:
        """The gradient-descent settings every definition's training starts from."""
        return GDConfig(
            learning_rate=self.learning_rate,
            lr_decay=self.lr_decay,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            validation_fraction=self.validation_fraction,
        )
