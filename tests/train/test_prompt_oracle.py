"""Prompt tuning through the LightningModule reproduces the official loss and offset gradient."""

from __future__ import annotations

import torch
from train_helpers import FIXTURE, mini_model, oracle_train_batch

from adapt.modes import build_policy
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.train.module import GLIPAdaptation


def test_training_step_matches_the_official_prompt_tuning_loss_and_gradient():
    io = torch.load(FIXTURE / "mini_io.pt", weights_only=True)
    pt = io["prompt_tuning"]
    model = mini_model(weights=True)
    prompt = encode_prompt(io["inputs"]["categories"], load_tokenizer())
    module = GLIPAdaptation(model, build_policy({"name": "prompt"}), prompt)
    with torch.no_grad():
        model.prompt_offset.copy_(pt["tunable_linear_weight_rows_0_255"])
    module.train()  # official prompt-tuning state: everything frozen and in eval mode

    # The fixture's training batch gives each image its own caption, so the batch carries its tokens.
    batch = oracle_train_batch(io)
    loss = module.training_step(batch, 0)
    assert loss is not None
    expected = pt["train_losses"]["total"]
    assert abs(loss.item() - float(expected)) <= 1e-5 * abs(float(expected))
    loss.backward()
    grad = model.prompt_offset.grad
    torch.testing.assert_close(grad, pt["grad_tunable_linear_weight_rows_0_255"], rtol=0, atol=1e-6)
