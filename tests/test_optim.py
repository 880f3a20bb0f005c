"""AdamW parameter groups, the warm-up + cosine schedule, and the logit-scale clamp."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_juicer.models import JuicerCLIP
from lightning_juicer.optim import param_groups, warmup_cosine


@pytest.fixture(scope="module")
def model(tiny_model_args):
    return JuicerCLIP(**tiny_model_args)


def test_no_weight_decay_on_norms_biases_embeddings_and_logit_scale(model):
    decay, no_decay = param_groups(model.model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    for name in ("logit_scale", "positional_embedding", "token_embedding.weight", "visual.class_embedding",
                 "visual.positional_embedding", "visual.ln_post.weight", "ln_final.bias"):
        assert name in not_decayed, name
    for name in ("visual.conv1.weight", "visual.proj", "text_projection",
                 "visual.transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight"):
        assert name in decayed, name
    assert not any(n.endswith(".bias") for n in decayed)
    assert len(decayed) + len(not_decayed) == sum(1 for _ in model.model.parameters())


def test_warmup_then_cosine():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(110) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_logit_scale_is_clamped_after_each_step(model):
    with torch.no_grad():
        model.model.logit_scale.fill_(10.0)
    model.on_train_batch_end(None, None, 0)
    assert model.model.logit_scale.item() == pytest.approx(math.log(100))
