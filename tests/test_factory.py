"""Building open_clip models: inline configs, local checkpoint paths, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.models import JuicerCLIP


def test_inline_config_sets_the_tokenizer_and_grid(tiny_model_args):
    model = JuicerCLIP(**tiny_model_args)
    spec = model.data_spec()
    assert (spec.image_size, spec.patch_size, spec.grid, spec.num_patches) == (64, 8, (8, 8), 64)
    assert spec.tokenizer(["a red star"]).shape == (1, 32)


def test_pretrained_local_checkpoint_loads_the_same_weights(tiny_model_args, tmp_path):
    torch.manual_seed(1)
    source = JuicerCLIP(**tiny_model_args)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    torch.manual_seed(2)
    loaded = JuicerCLIP(**{**tiny_model_args, "pretrained": str(path)})
    for (name, a), (_, b) in zip(source.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_pretrained_that_is_neither_tag_nor_file_is_refused(tiny_model_args):
    with pytest.raises(ConfigError, match="model.init_args.pretrained: 'nope.pt' is neither a file nor a pretrained tag"):
        JuicerCLIP(**{**tiny_model_args, "pretrained": "nope.pt"})


def test_a_tower_that_cannot_drop_patches_is_refused(tiny_model_args):
    args = copy.deepcopy(tiny_model_args)
    args["model_name"] = "tiny-resnet"
    args["model_config"]["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}
    with pytest.raises(ConfigError, match="cannot drop patches"):
        JuicerCLIP(**args)


def test_an_inline_config_registered_again_under_its_name_takes_effect(tiny_model_args):
    args = copy.deepcopy(tiny_model_args)
    args["model_name"] = "tiny-reregistered"
    first = JuicerCLIP(**args)
    args["model_config"]["embed_dim"] = 48
    second = JuicerCLIP(**args)
    assert first.model.text_projection.shape[1] == 96 and second.model.text_projection.shape[1] == 48
    del args["model_config"]["embed_dim"]
    with pytest.raises(ConfigError, match=r"^model.init_args.model_config: needs 'embed_dim'"):
        JuicerCLIP(**args)
