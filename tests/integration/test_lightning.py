"""Lightning: ``Trainer.fit`` with an adaptim optimizer, a checkpoint, and a resumed fit.

The optimizer comes from ``configure_optimizers``, as users write it. A fit of
half the steps is checkpointed, a fresh Trainer resumes it to the end, and
each must end where torch.optim ends when it runs the same way. (Lightning
resumes a loader without state at the next batch index, so a resumed fit sees
other batches than a straight one; torch.optim and adaptim see the same.)
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _cases import assert_params_match, batches, cases, make_optimizer, snapshot, tiny_model

pytestmark = pytest.mark.slow

STEPS = 4
Params = dict[str, torch.Tensor]


@functools.cache
def regression() -> Any:
    """The LightningModule class; lightning is imported when a test runs, not at collection."""
    import lightning

    class Regression(lightning.LightningModule):  # type: ignore[misc]
        def __init__(self, library: str, name: str, path: str, seed: int = 0) -> None:
            super().__init__()
            self.model = tiny_model(seed)
            self.choice = (library, name, path)

        def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            library, name, path = self.choice
            return make_optimizer(library, name, path, self.parameters())

    return Regression


def loader() -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
    """Two batches an epoch."""
    data = batches(2)
    x = torch.cat([x for x, _ in data])
    y = torch.cat([y for _, y in data])
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=len(data[0][0]), shuffle=False
    )


def fit(module: Any, steps: int, folder: Path, ckpt_path: Path | None = None) -> Path:
    import lightning

    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=folder,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consider more workers", "no validation loop", ...
        trainer.fit(module, loader(), ckpt_path=ckpt_path)
    checkpoint = folder / f"step-{steps}.ckpt"
    trainer.save_checkpoint(checkpoint)
    return checkpoint


def runs(library: str, name: str, path: str, folder: Path) -> tuple[Params, Params]:
    """A straight fit of :data:`STEPS`, and a fit checkpointed at half and resumed."""
    straight = regression()(library, name, path)
    fit(straight, STEPS, folder / "straight")
    checkpoint = fit(regression()(library, name, path), STEPS // 2, folder / "first")
    resumed = regression()(library, name, path, seed=1)
    fit(resumed, STEPS, folder / "resumed", ckpt_path=checkpoint)
    return snapshot(straight.model), snapshot(resumed.model)


@pytest.mark.parametrize(("name", "path"), cases())
def test_lightning_fit_checkpoint_resume(tmp_path: Path, name: str, path: str) -> None:
    reference, reference_resumed = runs("torch", name, path, tmp_path / "torch")
    ours, ours_resumed = runs("adaptim", name, path, tmp_path / "adaptim")
    assert_params_match(ours, reference, path)
    assert_params_match(ours_resumed, reference_resumed, path, "resumed fits")
    # The resumed fit went on from the checkpoint, not from its own initial weights.
    fresh = regression()("torch", name, path, seed=1)
    fit(fresh, STEPS // 2, tmp_path / "fresh")
    assert not torch.equal(snapshot(fresh.model)["0.weight"], reference_resumed["0.weight"])
