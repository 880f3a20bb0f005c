from __future__ import annotations

import json

import open_clip
import pytest
import timm
import timm.models.eva as timm_eva
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from safetensors.torch import save_file

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.evidence import IMAGENET_CLASSNAMES, ClassHead, class_evidence
from lightning_juicer.io.classnames import read_classnames
from lightning_juicer.governor.loading import load_governor, load_governor_model
from lightning_juicer.governor.scoring import PatchScorer

TINY_VIT = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 8, "layers": 2, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights far from timm's near-zero init, so scores differ clearly between patches."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _tiny_vit(name: str = "vit_small_patch16_224", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturb(timm.create_model(name, **{**TINY_VIT, **kw}))


def _images(batch: int = 3, size: tuple[int, int] = (32, 32), seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _last_block_input(block: torch.nn.Module, run) -> tuple[torch.Tensor, object]:
    captured = {}
    handle = block.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    try:
        out = run()
    finally:
        handle.remove()
    return captured["x"], out


def _naive_timm_scores(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full attention logits over all tokens with explicit matmuls; CLS row, patch columns, mean over heads."""
    block = model.blocks[-1]
    with torch.no_grad():
        x, feats = _last_block_input(block, lambda: model.forward_features(images))
        attn = block.attn
        h = block.norm1(x)
        b, n, _ = h.shape
        qkv = F.linear(h, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, attn.num_heads, attn.head_dim)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = q @ k.transpose(-2, -1) / attn.head_dim**0.5
        scores = logits[:, :, 0, model.num_prefix_tokens :].mean(dim=1)
        return scores, model.forward_head(feats, pre_logits=True)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("vit_small_patch16_224", {}),
        ("vit_small_patch16_224", {"reg_tokens": 4}),
        ("vit_small_patch16_224", {"qk_norm": True}),
        ("vit_small_patch16_224", {"qkv_bias": False}),
        ("vit_small_patch14_reg4_dinov2", {}),
    ],
    ids=["plain", "reg4", "qk_norm", "no_bias", "dinov2_reg4_layerscale"],
)
def test_timm_vit_scores_match_naive_attention_and_cls_matches_forward_head(name, kw):
    model = _tiny_vit(name, **kw)
    images = _images()
    out = PatchScorer(model)(images)
    ref, ref_cls = _naive_timm_scores(model, images)
    assert out.scores.shape == (3, 16) and out.scores.dtype == torch.float32
    assert out.grid == (4, 4)
    assert out.scores.std() > 0.1  # a real, non-degenerate score map
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-5, rtol=1e-5)
    assert out.cls.shape == (3, 64)


def test_register_tokens_are_excluded_from_the_scores():
    model = _tiny_vit(reg_tokens=4)
    scorer = PatchScorer(model)
    assert scorer.num_prefix_tokens == 5 and scorer.num_patches == 16
    out = scorer(_images())
    ref, _ = _naive_timm_scores(model, _images())
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)


def test_scorer_exposes_geometry_and_timm_normalisation():
    scorer = PatchScorer(_tiny_vit())
    assert scorer.grid == (4, 4)
    assert scorer.image_size == (32, 32) and scorer.patch_size == (8, 8)
    assert scorer.mean == (0.5, 0.5, 0.5) and scorer.std == (0.5, 0.5, 0.5)
    assert scorer.embed_dim == 64
    assert not any(p.requires_grad for p in scorer.parameters())
    scorer.train()
    assert not scorer.model.training


def test_dynamic_image_size_grid_follows_the_input():
    model = _tiny_vit(dynamic_img_size=True)
    images = _images(2, (48, 32))
    out = PatchScorer(model)(images)
    ref, ref_cls = _naive_timm_scores(model, images)
    assert out.grid == (6, 4) and out.scores.shape == (2, 24)
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-5, rtol=1e-5)


def test_prepare_renormalises_and_resizes_to_the_governor_input():
    scorer = PatchScorer(_tiny_vit())
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    student = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ready = scorer.prepare(student, mean, std)
    assert ready.shape == (2, 3, 32, 32)
    expected = F.interpolate((pixels - 0.5) / 0.5, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(ready, expected, atol=1e-5, rtol=1e-5)


def _eva_logits(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EvaAttention's own (unfused) logits of the last block, captured where the mask is added."""
    captured = []
    original = timm_eva.maybe_add_mask
    attn = model.blocks[-1].attn

    def capture(logits, bias):
        captured.append(logits)
        return original(logits, bias)

    timm_eva.maybe_add_mask, attn.fused_attn = capture, False
    try:
        with torch.no_grad():
            feats = model.forward_features(images)
    finally:
        timm_eva.maybe_add_mask, attn.fused_attn = original, True
    return captured[-1][:, :, 0, model.num_prefix_tokens :].mean(dim=1), model.forward_head(feats, pre_logits=True)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7, ref_feat_shape=(4, 4))),
        ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7, ref_feat_shape=(4, 4), qkv_fused=False)),
        ("vit_small_patch16_dinov3", dict(img_size=32, patch_size=8)),
    ],
    ids=["eva02_rope_fused", "eva02_rope_separate_qkv", "dinov3_rope_reg4"],
)
def test_eva_scores_with_rope_match_the_blocks_own_logits(name, kw):
    torch.manual_seed(0)
    model = _perturb(timm.create_model(name, pretrained=False, embed_dim=48, depth=2, num_heads=3, num_classes=4, **kw))
    assert model.rope is not None
    images = _images(2, tuple(model.patch_embed.img_size))
    out = PatchScorer(model)(images)
    ref, ref_cls = _eva_logits(model, images)
    assert out.grid == (4, 4) and out.scores.shape == (2, 16)
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True}, {"pool_type": "avg"}], ids=["mha", "custom_qk_norm", "avg_pool"])
def test_open_clip_tower_scores_match_naive_attention(kw):
    torch.manual_seed(0)
    visual = OpenClipVisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=2.0, output_dim=16, **kw
    )
    visual = _perturb(visual)
    images = _images()
    block = visual.transformer.resblocks[-1]
    with torch.no_grad():
        x, ref_cls = _last_block_input(block, lambda: visual(images))
        h = block.ln_1(x)
        q, k, _ = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        q, k = q.view(3, 17, 4, 8).transpose(1, 2), k.view(3, 17, 4, 8).transpose(1, 2)
        if hasattr(block.attn, "ln_q"):
            q, k = block.attn.ln_q(q), block.attn.ln_k(k)
        ref = (q @ k.transpose(-2, -1) / 8**0.5)[:, :, 0, 1:].mean(dim=1)
    scorer = PatchScorer(visual)
    out = scorer(images)
    assert scorer.mean == tuple(open_clip.OPENAI_DATASET_MEAN) and scorer.grid == (4, 4)
    assert out.grid == (4, 4) and out.scores.std() > 0.1
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-5, rtol=1e-5)


def test_unsupported_governors_are_refused_with_the_config_key():
    with pytest.raises(ConfigError, match="governor.name: .*no class token"):
        PatchScorer(_tiny_vit(class_token=False, global_pool="avg"))
    with pytest.raises(ConfigError, match="governor.name: last block ResPostBlock"):
        PatchScorer(_tiny_vit(block_fn=timm.models.vision_transformer.ResPostBlock))
    with pytest.raises(ConfigError, match="governor.name: Linear is not a supported governor"):
        PatchScorer(torch.nn.Linear(3, 3))


def test_class_evidence_thresholds_and_caps_known_probabilities():
    names = ["cat", "dog", "car", "tree"]
    probs = torch.tensor(
        [[0.05, 0.80, 0.10, 0.05], [0.40, 0.30, 0.20, 0.10], [0.69, 0.71, 0.72, 0.90], [0.70, 0.0, 0.0, 0.30]]
    )
    assert class_evidence(probs, names) == [
        [("dog", pytest.approx(0.8))],
        [],
        [("tree", pytest.approx(0.9)), ("car", pytest.approx(0.72)), ("dog", pytest.approx(0.71))],
        [],
    ]
    capped = class_evidence(probs, names, threshold=0.5, max_classes=2)[2]
    assert capped == [("tree", pytest.approx(0.9)), ("car", pytest.approx(0.72))]
    assert class_evidence(probs, names, threshold=0.25, max_classes=3)[1] == [
        ("cat", pytest.approx(0.4)),
        ("dog", pytest.approx(0.3)),
    ]


def test_class_head_from_known_logits_softmax_and_sigmoid():
    weight = torch.eye(3)
    bias = torch.tensor([0.0, 0.0, -1.0])
    head = ClassHead(weight, bias, ["a", "b", "c"])
    cls = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    probs = head(cls)
    expected = torch.tensor([[3.0, 0.0, -1.0], [0.0, 0.0, 0.0]]).softmax(-1)
    torch.testing.assert_close(probs, expected)
    assert class_evidence(probs, head.classnames) == [[("a", pytest.approx(expected[0, 0].item()))], []]
    sig = ClassHead(weight, bias, ["a", "b", "c"], activation="sigmoid")(cls)
    torch.testing.assert_close(sig, torch.tensor([[3.0, 0.0, -1.0], [0.0, 0.0, 0.0]]).sigmoid())
    with pytest.raises(ConfigError, match="governor.head: the head expects 3-d input"):
        head(torch.zeros(1, 4))


def test_class_head_from_the_governors_own_timm_head():
    model = _tiny_vit()
    scorer = PatchScorer(model)
    names = [f"shape{i}" for i in range(5)]
    with pytest.raises(ConfigError, match="governor.head.activation: .* records no activation"):
        ClassHead.from_model(scorer, names)  # a closed-set head is evidence only when asked for explicitly
    head = ClassHead.from_model(scorer, names, activation="softmax")
    images = _images()
    with torch.no_grad():
        expected = model(images).softmax(-1)
    torch.testing.assert_close(head(scorer(images).cls), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="governor.classnames: the head has 5 classes"):
        ClassHead.from_model(model, activation="softmax")
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": names}
    assert ClassHead.from_model(model, activation="softmax").classnames == names
    imagenet = timm.create_model("vit_small_patch16_224", **{**TINY_VIT, "num_classes": 1000})
    assert ClassHead.from_model(imagenet, activation="softmax").classnames == list(IMAGENET_CLASSNAMES)
    with pytest.raises(ConfigError, match="governor.head: .*no classifier head"):
        ClassHead.from_model(timm.create_model("vit_small_patch16_224", **{**TINY_VIT, "num_classes": 0}))


def test_class_head_from_a_linear_head_file_and_class_name_file(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(1000, 64, generator=gen), torch.randn(1000, generator=gen)
    dino_style = {"epoch": 100, "state_dict": {"module.linear.weight": weight, "module.linear.bias": bias}}
    torch.save(dino_style, tmp_path / "dino.pth")
    with pytest.raises(ConfigError, match="governor.head.activation: head file .*dino.pth records no activation"):
        ClassHead.from_file(tmp_path / "dino.pth", embed_dim=64)
    head = ClassHead.from_file(tmp_path / "dino.pth", embed_dim=64, activation="softmax")
    assert head.classnames == list(IMAGENET_CLASSNAMES)
    cls = torch.randn(2, 64, generator=gen)
    torch.testing.assert_close(head(cls), (cls @ weight.T + bias).softmax(-1))

    save_file({"weight": weight[:3].contiguous(), "bias": bias[:3].contiguous()}, str(tmp_path / "head.safetensors"))
    (tmp_path / "names.txt").write_text("red square\n\nblue circle\ngreen star\n")
    assert read_classnames(tmp_path / "names.txt") == ["red square", "blue circle", "green star"]
    small = ClassHead.from_file(tmp_path / "head.safetensors", tmp_path / "names.txt", activation="softmax")
    torch.testing.assert_close(small(cls), (cls @ weight[:3].T + bias[:3]).softmax(-1))

    torch.save({"weight": torch.zeros(1000, 4 * 64), "bias": torch.zeros(1000)}, tmp_path / "four_blocks.pth")
    with pytest.raises(ConfigError, match="governor.head: .* expects 256-d input but .* 64-d"):
        ClassHead.from_file(tmp_path / "four_blocks.pth", embed_dim=64, activation="softmax")
    with pytest.raises(ConfigError, match="governor.classnames: 3 names for a head with 1000 classes"):
        ClassHead.from_file(tmp_path / "dino.pth", tmp_path / "names.txt", activation="softmax")


def _save_tiny_clip(folder) -> torch.nn.Module:
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    _perturb(model)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model


def test_zero_shot_head_from_an_open_clip_text_tower(tmp_path):
    model = _save_tiny_clip(tmp_path / "clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=16)
    names = ["circle", "square", "triangle"]
    templates = ("a photo of a {}.",)
    with pytest.raises(ConfigError, match="governor.head.activation: a zero-shot head records no activation"):
        ClassHead.zero_shot(model, tokenizer, names, templates)
    head = ClassHead.zero_shot(model, tokenizer, names, templates, activation="softmax")
    scorer = PatchScorer(model)
    images = _images()
    with torch.no_grad():
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
        expected = (model.logit_scale.exp() * image_features @ text_features.T).softmax(-1)
    torch.testing.assert_close(head(scorer(images).cls), expected, atol=1e-5, rtol=1e-4)


def test_load_governor_from_a_timm_folder_and_from_a_weights_file(tmp_path):
    model = _tiny_vit(reg_tokens=4)
    timm.models.save_for_hf(model, tmp_path / "governor")
    images = _images()
    ref, ref_cls = _naive_timm_scores(model, images)

    scorer = load_governor(str(tmp_path / "governor"))
    out = scorer(images)
    assert scorer.num_prefix_tokens == 5 and scorer.grid == (4, 4)
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-5, rtol=1e-5)

    torch.save(model.state_dict(), tmp_path / "weights.pth")
    kw = {k: v for k, v in TINY_VIT.items() if k != "pretrained"}
    scorer = load_governor("vit_small_patch16_224", pretrained=tmp_path / "weights.pth", reg_tokens=4, **kw)
    torch.testing.assert_close(scorer(images).scores, ref, atol=1e-5, rtol=1e-5)


def test_load_governor_from_an_open_clip_folder(tmp_path):
    model = _save_tiny_clip(tmp_path / "clip")
    scorer = load_governor(f"open_clip:local-dir:{tmp_path / 'clip'}")
    images = _images()
    with torch.no_grad():
        expected = model.encode_image(images)
    assert scorer.family == "open_clip" and scorer.grid == (4, 4)
    torch.testing.assert_close(scorer(images).cls, expected, atol=1e-5, rtol=1e-5)


def test_load_governor_errors_name_the_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="governor.name: unknown governor 'not_a_vit'"):
        load_governor("not_a_vit")
    with pytest.raises(ConfigError, match="governor.name: no local weights for 'vit_small_patch16_224.dino'"):
        load_governor("vit_small_patch16_224.dino")
    with pytest.raises(ConfigError, match="governor.name: Invalid pretrained tag"):
        load_governor("vit_small_patch16_224.nope")
    with pytest.raises(ConfigError, match="governor.name: unknown open_clip model 'ViT-Nope'"):
        load_governor("open_clip:ViT-Nope")
    with pytest.raises(ConfigError, match=r"governor.name: no local weights for 'open_clip:ViT-B-16 \(openai\)'"):
        load_governor("open_clip:ViT-B-16")
    with pytest.raises(ConfigError, match="governor.name: governor folder .* not found"):
        load_governor(str(tmp_path / "missing"))
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="governor.name: .* is a weights file"):
        load_governor(str(tmp_path / "w.pth"))
    with pytest.raises(ConfigError, match="governor.pretrained: weights file .* not found"):
        load_governor("vit_small_patch16_224", pretrained=str(tmp_path / "nope.pth"))
    torch.save(_tiny_vit().state_dict(), tmp_path / "small.pth")
    with pytest.raises(ConfigError, match="governor.pretrained: cannot load .* into vit_small_patch16_224"):
        load_governor("vit_small_patch16_224", pretrained=tmp_path / "small.pth")
    assert isinstance(load_governor_model("vit_small_patch16_224", **TINY_VIT), timm.models.VisionTransformer)


def test_load_governor_by_timm_name_uses_the_local_hf_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    model = _tiny_vit("vit_small_patch16_224", **{**kw, "num_classes": 0})
    repo = tmp_path / "hf" / "models--timm--vit_small_patch16_224.dino"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(model.state_dict(), str(snapshot / "model.safetensors"))
    scorer = load_governor("vit_small_patch16_224.dino", **kw)
    images = _images()
    ref, ref_cls = _naive_timm_scores(model, images)
    assert scorer.mean == (0.485, 0.456, 0.406)  # DINO's ImageNet normalisation from its pretrained cfg
    torch.testing.assert_close(scorer(images).scores, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scorer(images).cls, ref_cls, atol=1e-5, rtol=1e-5)
