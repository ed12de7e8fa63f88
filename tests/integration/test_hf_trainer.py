"""The Hugging Face ``Trainer`` with an adaptim optimizer, on a tiny randomly initialised Llama.

The model is built from a config (nothing is downloaded; conftest puts the hub
offline). The optimizer reaches the Trainer both ways it accepts one: built by the user
(``optimizers=(optimizer, None)``) and built by the Trainer
(``optimizer_cls_and_kwargs``). The Trainer's own gradient clipping and
constant schedule run on both sides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from _cases import ALGORITHMS, PATHS, assert_params_match, cases, make_optimizer, optimizer_class

if TYPE_CHECKING:
    import transformers

pytestmark = pytest.mark.slow

STEPS = 3
Params = dict[str, torch.Tensor]


def offline_transformers() -> Any:
    """transformers, imported when a test runs (not at collection); conftest put the hub offline."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    import transformers

    return transformers


def tiny_llama() -> transformers.LlamaForCausalLM:
    """One layer, hidden size 16, no biases.

    A key bias has a gradient of exactly zero in exact arithmetic (softmax
    ignores a shift shared by all keys), so in floats it is rounding noise;
    Adam-like rules scale that noise up to steps of ``lr``, and two paths that
    round differently then disagree there by ``lr``, far above any tolerance.
    Llama's attention has no biases.
    """
    transformers = offline_transformers()
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        initializer_range=0.5,  # gradients well above rounding noise in every weight
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 64, (4 * STEPS, 12), generator=g)
    return [{"input_ids": row, "labels": row} for row in tokens]


def train_with(folder: Path, **optimizer: Any) -> Params:
    transformers = offline_transformers()
    model = tiny_llama()
    if "build" in optimizer:
        optimizer = {"optimizers": (optimizer.pop("build")(model.parameters()), None)}
    arguments = transformers.TrainingArguments(
        output_dir=str(folder),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=arguments, train_dataset=dataset(), **optimizer
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "path"), cases())
def test_hf_trainer_with_optimizer_instance(tmp_path: Path, name: str, path: str) -> None:
    reference = train_with(tmp_path, build=lambda ps: make_optimizer("torch", name, path, ps))
    ours = train_with(tmp_path, build=lambda ps: make_optimizer("adaptim", name, path, ps))
    assert_params_match(ours, reference, path)


@pytest.mark.parametrize(("name", "path"), cases(["AdamW"]))
def test_hf_trainer_with_optimizer_cls_and_kwargs(tmp_path: Path, name: str, path: str) -> None:
    def choice(library: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        extra = PATHS[path] if library == "adaptim" else {}
        return optimizer_class(library, name), {**ALGORITHMS[name], **extra}

    reference = train_with(tmp_path, optimizer_cls_and_kwargs=choice("torch"))
    ours = train_with(tmp_path, optimizer_cls_and_kwargs=choice("adaptim"))
    assert_params_match(ours, reference, path)
