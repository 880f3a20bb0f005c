"""The strategy registry (needs, typed settings, misuse refused at config time) and the two strategies added as
"one new file + registration": the paper's ``mix`` and the context-preserving ``topk_context``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.data.drops import DropCounter
from lightning_juicer.data.samples import BatchCollator
from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.common import SampleKeep, ScoreKeep
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.online import OnlineSelector
from lightning_juicer.selection import (
    STRATEGIES,
    Cluster,
    Mix,
    SelectionStrategy,
    TopKContext,
    build_strategy,
    resample_scores,
    select_random,
    select_stratified,
    select_topk,
)

SPEC = DataSpec(image_size=64, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16))
KEY = "data.init_args.selection"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _valid(keep: torch.Tensor, k: int, m: int) -> bool:
    """[B, k] long, sorted ascending, no duplicates, inside the grid."""
    return (keep.dtype == torch.long and keep.shape[1] == k and bool((keep[:, 1:] > keep[:, :-1]).all())
            and int(keep.min()) >= 0 and int(keep.max()) < m)


# --- topk_context -------------------------------------------------------------------------------------------------


def test_topk_context_keeps_the_top_share_and_draws_the_rest_uniformly_from_the_others():
    scores = torch.tensor([[0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]])  # ranking: 1, 3, 5, 7, 9, 8, 6, ...
    strategy = TopKContext(context=0.5)
    keep, bad = strategy(scores, 0.4, _gen(3))  # k = 4: the top 2 (patches 1, 3) + 2 of the other 8
    top = {1, 3}
    assert bad == 0 and _valid(keep, 4, 10) and top <= set(keep[0].tolist())
    # exactly: the 2 largest of 8 uniform draws index the ranking past the top 2
    ranking = [1, 3, 5, 7, 9, 8, 6, 4, 2, 0]
    drawn = torch.rand(1, 8, generator=_gen(3)).topk(2, dim=1).indices[0].tolist()
    assert keep[0].tolist() == sorted([1, 3] + [ranking[2 + d] for d in drawn])
    # over seeds: always the top 2, always exactly 2 others, and every other patch is reachable
    others = set()
    for seed in range(60):
        row = set(strategy(scores, 0.4, _gen(seed))[0][0].tolist())
        assert top <= row and len(row - top) == 2
        others |= row - top
    assert others == set(range(10)) - top


def test_topk_context_extremes_are_topk_and_a_random_set_and_it_is_deterministic():
    scores = torch.randn(6, 49, generator=_gen(1))
    assert torch.equal(TopKContext(context=0.0)(scores, 0.5)[0], select_topk(scores, 24))  # k = round(24.5) = 24
    everything = TopKContext(context=1.0)(scores, 0.5, _gen(2))[0]
    assert _valid(everything, 24, 49) and not torch.equal(everything, select_topk(scores, 24))
    a, b = (TopKContext(context=0.3)(scores, 0.5, _gen(4))[0] for _ in range(2))
    assert torch.equal(a, b) and _valid(a, 24, 49)
    # context share: round(0.3 * 24) = 7 outside the top 17, per row
    top17 = select_topk(scores, 17)
    assert [int(torch.isin(top, row).sum()) for row, top in zip(a, top17)] == [17] * 6


# --- mix ----------------------------------------------------------------------------------------------------------


def test_mix_gives_each_image_one_components_selection_exactly():
    scores = torch.randn(40, 16, generator=_gen(5))
    keep, bad = Mix()(scores, 0.25, _gen(6))  # k = 4
    assert bad == 0 and _valid(keep, 4, 16)
    # the same generator, in the same order: one uniform per image picks the component, then each component selects
    g = _gen(6)
    choice = (torch.rand(40, generator=g).double() * 3).floor().long().clamp(max=2)  # equal weights: thirds
    picks = torch.stack([select_topk(scores, 4), select_stratified(scores, 4, g), select_random(40, 16, 4, g)])
    assert torch.equal(keep, picks[choice, torch.arange(40)])
    assert set(choice.tolist()) == {0, 1, 2}


def test_mix_weights_set_the_share_of_each_component():
    scores = torch.arange(16.0).flip(0).expand(200, 16).contiguous()  # patch i has rank i
    keep = Mix(components=["topk", "stratified"], weights=[1.0, 1.0])(scores, 0.25, _gen(7))[0]
    as_topk = (keep == torch.tensor([0, 1, 2, 3])).all(1)  # stratified always keeps a patch of ranks 12..15
    assert 70 < int(as_topk.sum()) < 130  # half of 200 (binomial std 7)
    assert ((keep[~as_topk] // 4) == torch.arange(4)).all()  # the others: one per stratum
    only_topk = Mix(components=["topk", "random"], weights=[1.0, 0.0])(scores, 0.25, _gen(8))[0]
    assert (only_topk == torch.tensor([0, 1, 2, 3])).all()


@pytest.mark.parametrize("strategy", [Mix(), TopKContext()])
def test_score_strategies_fall_back_to_random_for_non_finite_rows(strategy):
    scores = torch.randn(4, 16, generator=_gen(9))
    scores[2, 5] = float("nan")
    keep, bad = strategy(scores, 0.5, _gen(10))
    assert torch.is_tensor(bad) and bad.dim() == 0 and int(bad) == 1 and _valid(keep, 8, 16)


# --- the registry refuses misuse at config time --------------------------------------------------------------------


def test_registry_builds_short_names_and_instances_and_refuses_misuse():
    assert isinstance(build_strategy("mix", KEY), Mix)
    custom = TopKContext(context=0.5)
    assert build_strategy(custom, KEY) is custom
    with pytest.raises(ConfigError, match=r"^data.init_args.selection: 'best' is not a selection strategy; choose from"):
        build_strategy("best", KEY)
    with pytest.raises(ConfigError, match=r"^data.init_args.selection: 'cluster' needs the governor's patch features"):
        build_strategy("cluster", KEY, ("nothing", "scores"), "sidecars")
    with pytest.raises(ConfigError, match=r"^data.init_args.selection.init_args.context: 1.5 is outside \[0, 1\]"):
        build_strategy(TopKContext(context=1.5), KEY)
    with pytest.raises(ConfigError, match=r"^data.init_args.selection.init_args.num_clusters: 0 must be >= 1"):
        build_strategy(Cluster(num_clusters=0), KEY)
    for components, what in ((["topk", "full"], "'full' cannot be mixed"), (["cluster"], "'cluster' cannot be mixed"),
                             (["topk", "nope"], "'nope' is not a selection strategy")):
        with pytest.raises(ConfigError, match=rf"^data.init_args.selection.init_args.components: {what}"):
            build_strategy(Mix(components=components), KEY)
    with pytest.raises(ConfigError, match=r"^data.init_args.selection.init_args.weights: \[1.0\] must be one"):
        build_strategy(Mix(weights=[1.0]), KEY)
    with pytest.raises(ConfigError, match=r"^data.init_args.selection: 3 is not a selection strategy"):
        build_strategy(3, KEY)  # type: ignore[arg-type]


def test_every_user_refuses_misuse_with_its_key(tiny_synthetic):
    with pytest.raises(ConfigError, match=r"^data.init_args.selection: 'best' is not a selection strategy"):
        JuicerDataModule(selection="best", data_spec=SPEC)
    with pytest.raises(ConfigError, match=r"^data.init_args.scores: selection 'cluster' needs the governor's patch"):
        JuicerDataModule(selection=Cluster(num_clusters=3), scores="sidecar", data_spec=SPEC)
    with pytest.raises(ConfigError, match=r"^data.init_args.selection.init_args.context"):
        JuicerDataModule(selection=TopKContext(context=-0.1), data_spec=SPEC)
    with pytest.raises(ConfigError, match=r"^data.init_args.selection: 'cluster' needs .* which sidecars cannot"):
        BatchCollator(SPEC.tokenizer, "cluster", 0.5, SPEC.grid)
    with pytest.raises(ConfigError, match=r"^selection: 'topk' needs the governor's patch scores, which evaluation"):
        SampleKeep("topk", 64, 0.5)
    from lightning_juicer.callbacks import RetrievalEvaluation, ZeroShotEvaluation

    key = r"^trainer.callbacks\[ZeroShotEvaluation\].init_args"
    with pytest.raises(ConfigError, match=key + r".selection: 'best' is not a selection strategy"):
        ZeroShotEvaluation(selection="best")
    with pytest.raises(ConfigError, match=key + r".selection.init_args.components: 'full' cannot be mixed"):
        ZeroShotEvaluation(selection=Mix(components=["full"]))
    assert RetrievalEvaluation(selection="cluster", keep_ratio=0.5).strategy.needs == "features"
    # what each DataModule selection reads, decided by ``needs``
    modes = {(name, scores): (dm.selects_on_the_fly, dm.selects_from_sidecars)
             for name in ("full", "random", "topk", "mix", "topk_context", "cluster")
             for scores in ("on_the_fly", "sidecar") if not (name == "cluster" and scores == "sidecar")
             for dm in [JuicerDataModule(selection=name, scores=scores, keep_ratio=0.5, data_spec=SPEC)]}
    assert modes == {
        ("full", "on_the_fly"): (False, False), ("full", "sidecar"): (False, False),
        ("random", "on_the_fly"): (False, False), ("random", "sidecar"): (False, False),
        ("topk", "on_the_fly"): (True, False), ("topk", "sidecar"): (False, True),
        ("mix", "on_the_fly"): (True, False), ("mix", "sidecar"): (False, True),
        ("topk_context", "on_the_fly"): (True, False), ("topk_context", "sidecar"): (False, True),
        ("cluster", "on_the_fly"): (True, False)}


def test_a_new_strategy_is_one_class_and_its_registration():
    @STRATEGIES.register("test_leftmost")
    class Leftmost(SelectionStrategy):
        needs = "nothing"
        stochastic = False

        def select(self, inputs, k, generator=None):
            return torch.arange(k, device=inputs.device).expand(inputs.shape[0], k)

    try:
        collate = BatchCollator(SPEC.tokenizer, "test_leftmost", 0.25, SPEC.grid)
        batch = collate([{"image": torch.zeros(3, 64, 64), "caption": "a", "key": str(i)} for i in range(3)])
        assert batch["keep"].tolist() == [list(range(16))] * 3
    finally:
        STRATEGIES._classes.pop("test_leftmost")  # keep the registry as shipped for the other tests


# --- in the collator (sidecar scores) and on the fly ---------------------------------------------------------------


def _samples(scores: np.ndarray | None, grid=(4, 4)) -> list[dict]:
    rows = [] if scores is None else scores
    return [{"image": torch.zeros(3, 64, 64), "caption": f"c{i}", "key": f"k{i}",
             "scores": (row.astype(np.float16), grid)} for i, row in enumerate(rows)]


@pytest.mark.parametrize("selection", ["mix", TopKContext(context=0.5)])
def test_new_strategies_select_from_sidecar_scores_in_the_collator(selection):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 16)).astype(np.float32)
    scores[4, 2] = np.nan  # one non-finite row: random patches, counted
    drops = DropCounter()
    collate = BatchCollator(SPEC.tokenizer, selection, 0.25, SPEC.grid, drops)
    samples = _samples(scores)
    samples[5]["scores"] = None  # no sidecar entry: random patches, counted by the decoder, not here
    keep = collate(samples)["keep"]
    assert _valid(keep, 16, 64) and keep.shape == (6, 16)
    assert drops.total == {"nonfinite_scores": 1}
    student = resample_scores(torch.from_numpy(scores.astype(np.float16).astype(np.float32)), (4, 4), (8, 8))
    if isinstance(selection, TopKContext):  # the top 8 of each scored sample are kept, 8 more from the rest
        for row, top in zip(keep[:4], select_topk(student[:4], 8)):
            assert torch.isin(top, row).all()


@pytest.fixture(scope="module")
def scorer():
    return load_governor("juicer-synthetic")


@pytest.mark.parametrize("selection", ["mix", TopKContext(context=0.25), "cluster"])
def test_new_strategies_select_on_the_fly_and_in_evaluation(scorer, selection):
    images = torch.randn(6, 3, 64, 64, generator=_gen(11))
    selector = OnlineSelector(scorer, selection, 0.5, SPEC.grid, SPEC.mean, SPEC.std)
    assert isinstance(selector, torch.nn.Module) and dict(selector.named_children()) == {"scorer": scorer}
    keep, fallbacks = selector(images)
    assert _valid(keep, 32, 64) and keep.shape == (6, 32) and int(fallbacks) == 0
    if isinstance(selection, TopKContext):  # round(0.25 * 32) = 8 context patches beside the top 24
        scores = selector.scores(images)
        for row, top in zip(keep, select_topk(scores, 24)):
            assert torch.isin(top, row).all()
    # evaluation seeds each sample by its index: the same patches whatever the batching
    evaluate = ScoreKeep(selector, 64, seed=1)
    index = torch.arange(6)
    whole = evaluate(index, images)
    assert torch.equal(whole, torch.cat([evaluate(index[:2], images[:2]), evaluate(index[2:], images[2:])]))
    assert _valid(whole, 32, 64)


@contextlib.contextmanager
def host_reads():
    """Records every host read of a tensor (what waits for the device queue on a GPU) made inside the block."""
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__",
                                                            "__float__", "__index__")}
    for name, original in saved.items():
        setattr(torch.Tensor, name, lambda t, *a, _n=name, _o=original, **kw: calls.append(_n) or _o(t, *a, **kw))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def test_every_governor_strategy_selects_on_the_fly_without_host_reads(scorer):
    images = torch.randn(4, 3, 64, 64, generator=_gen(12))
    images[1, 0, 0, 0] = float("nan")  # a non-finite sample: the fallback count stays on the device
    with host_reads() as calls:
        assert int(torch.ones(())) == 1
    assert calls == ["__int__"]  # the spy sees reads
    for name in STRATEGIES:
        selector = OnlineSelector(scorer, name, 0.5, SPEC.grid, SPEC.mean, SPEC.std)
        with host_reads() as calls:
            keep, fallbacks = selector(images)
        assert calls == [], f"{name}: host reads {calls}"
        assert name == "full" or _valid(keep, 32, 64)
        if STRATEGIES.get(name).needs == "scores":
            assert torch.is_tensor(fallbacks) and int(fallbacks) == 1, name


def test_zero_shot_evaluation_with_cluster_runs_through_validate(tiny_synthetic, tiny_model_args, tmp_path):
    """The issue's bug: ZeroShotEvaluation(selection="cluster") was accepted, then failed; it now evaluates."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_juicer.callbacks import ZeroShotEvaluation
    from lightning_juicer.models import JuicerCLIP

    torch.manual_seed(0)
    model = JuicerCLIP(**tiny_model_args)
    seen: list[torch.Tensor | None] = []
    encode = model.encode_image
    model.encode_image = lambda image, keep=None, normalize=True: seen.append(keep) or encode(image, keep, normalize)
    callback = ZeroShotEvaluation(name="zs_cluster", templates="photo", batch_size=16, num_workers=0, keep_ratio=0.25,
                                  selection="cluster", root=str(tiny_synthetic.zeroshot_dir),
                                  classnames=str(tiny_synthetic.classnames_file))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="run"), callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, val_shards=tiny_synthetic.val_shards, batch_size=8,
                          num_workers=0)
    trainer.validate(model, dm)
    records = json.loads((Path(trainer.log_dir) / "results.json").read_text())
    assert {(r["dataset"], r["keep_ratio"], r["selection"], r["governor"]) for r in records} == {
        ("zs_cluster", 0.25, "cluster", "juicer-synthetic")}
    kept = [k for k in seen if k is not None]  # the val loss batch goes through forward, not encode_image
    assert kept and all(k.shape[1] == 16 for k in kept) and sum(len(k) for k in kept) == records[0]["num_samples"]


def test_configs_name_a_strategy_or_give_its_class_path_and_settings(tmp_path):
    from lightning_juicer.callbacks import ZeroShotEvaluation
    from lightning_juicer.cli import main
    from tests.conftest import QUICKSTART

    extra = tmp_path / "selection.yaml"
    extra.write_text(
        "data:\n  init_args:\n    selection:\n      class_path: lightning_juicer.selection.TopKContext\n"
        "      init_args: {context: 0.5}\n"
        "trainer:\n  callbacks:\n    - class_path: lightning_juicer.callbacks.ZeroShotEvaluation\n"
        "      init_args: {name: zs, keep_ratio: 0.5, selection: {class_path: Mix, init_args: {components: [topk, random],"
        " weights: [3, 1]}}}\n"
    )
    cli = main(["--config", str(QUICKSTART), "--config", str(extra)], run=False)
    assert isinstance(cli.datamodule.strategy, TopKContext) and cli.datamodule.strategy.context == 0.5
    assert cli.datamodule.selects_on_the_fly
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ZeroShotEvaluation)]
    assert (callback.strategy.components, callback.strategy.weights) == (("topk", "random"), (3.0, 1.0))
    cli = main(["--config", str(QUICKSTART), "--data.init_args.selection", "mix"], run=False)
    assert type(cli.datamodule.strategy) is Mix
