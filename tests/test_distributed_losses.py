"""DDP-exact losses: with 2 gloo processes, one step's loss and gradients equal one process on the global batch."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lightning_juicer.models import JuicerCLIP
from lightning_juicer.models.family import compute_losses

WORLD_SIZE = 2
PER_RANK = 4
CASES = {
    "clip gathered": {},
    "clip local_loss": {"local_loss": True},
    "siglip bidir": {"loss": "siglip"},
    "siglip gather": {"loss": "siglip", "siglip_dist_impl": "gather"},
    # Negative control: without gathering through autograd the local loss misses the other ranks' terms.
    "clip local_loss without gather_with_grad": {"local_loss": True, "gather_with_grad": False},
}


class StepLoss(torch.nn.Module):
    """The training step's loss as a module, so torch's DDP averages its gradients as Lightning's DDP does."""

    def __init__(self, module: JuicerCLIP, loss_fn: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, batch: dict) -> torch.Tensor:
        return compute_losses(self.loss_fn, self.module(batch))["loss"]


def global_batch(module: JuicerCLIP) -> dict:
    generator = torch.Generator().manual_seed(1)
    size = WORLD_SIZE * PER_RANK
    words = ["red", "blue", "green", "star", "heart", "circle", "left", "right"]
    captions = [" ".join(words[(i * 3 + j) % len(words)] for j in range(1 + i % 4)) for i in range(size)]
    return {
        "image": torch.randn(size, 3, 64, 64, generator=generator),
        "keep": torch.stack([torch.randperm(64, generator=generator)[:16].sort().values for _ in range(size)]),
        "text": module.tokenizer(captions),
    }


def gradients(module: JuicerCLIP) -> dict[str, torch.Tensor]:
    grads = {name: param.grad.detach().clone() for name, param in module.named_parameters() if param.grad is not None}
    module.zero_grad(set_to_none=True)
    return grads


def worker(rank: int, init_file: str, model_args: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    results = {}
    for name, overrides in CASES.items():
        torch.manual_seed(0)
        module = JuicerCLIP(**model_args, **overrides).train()
        batch = global_batch(module)
        reference_loss = StepLoss(module, module.build_loss())(batch)
        reference_loss.backward()
        reference = gradients(module)

        step = DistributedDataParallel(StepLoss(module, module.build_loss(rank, WORLD_SIZE)))
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss = step({key: value[rows] for key, value in batch.items()})
        loss.backward()  # DDP all-reduces the gradients to their mean over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD_SIZE
        grads = gradients(module)
        assert grads.keys() == reference.keys()
        results[name] = {
            "reference_loss": reference_loss.item(),
            "rank_loss": loss.item(),
            "mean_loss": mean_loss.item(),
            "max_grad": max(g.abs().max().item() for g in reference.values()),
            "max_grad_diff": max((grads[k] - reference[k]).abs().max().item() for k in reference),
            "logit_scale_grad": [reference["model.logit_scale"].item(), grads["model.logit_scale"].item()],
        }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model_args):
    root = tmp_path_factory.mktemp("ddp_losses")
    mp.spawn(worker, args=(str(root / "init"), tiny_model_args, str(root)), nprocs=WORLD_SIZE, join=True)
    return [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("case", ["clip gathered", "clip local_loss", "siglip bidir", "siglip gather"])
def test_two_ranks_match_one_process_on_the_global_batch(results, case):
    for rank_results in results:
        r = rank_results[case]
        assert r["mean_loss"] == pytest.approx(r["reference_loss"], rel=1e-5, abs=1e-6)
        assert r["max_grad_diff"] <= 1e-5 * r["max_grad"], r
        assert r["logit_scale_grad"][1] == pytest.approx(r["logit_scale_grad"][0], rel=1e-4, abs=1e-7)
    if case == "clip gathered":  # every rank computes the whole global loss
        assert [rank_results[case]["rank_loss"] for rank_results in results] == pytest.approx(
            [results[0][case]["reference_loss"]] * WORLD_SIZE, rel=1e-5)
    else:  # each rank's loss covers its own rows; they differ and average to the global loss
        assert results[0][case]["rank_loss"] != pytest.approx(results[1][case]["rank_loss"], rel=1e-3)


def test_the_comparison_catches_wrong_gradients(results):
    r = results[0]["clip local_loss without gather_with_grad"]
    assert r["mean_loss"] == pytest.approx(r["reference_loss"], rel=1e-5)  # same loss value ...
    assert r["max_grad_diff"] > 1e-2 * r["max_grad"]  # ... but the gradients lose the cross-rank terms
