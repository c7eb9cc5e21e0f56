"""Two gloo processes x B/2 must train exactly like one process x B.

Why the equality holds for losses that couple samples across the batch: each rank computes the
mean loss over its B/W *local* queries against keys gathered from all ranks with
``all_gather_with_grad``. The gather's backward sums, onto each rank's own embeddings, the key
gradients coming from every rank's loss, so rank r's parameter gradient is
d(sum_s L_s)/dtheta through rank r's samples. DDP then averages over the W ranks:
(1/W) * sum_r d(sum_s L_s)/dtheta|_r = d((1/W) sum_s L_s)/dtheta, and (1/W) sum_s L_s is
the mean over all B queries, i.e. the single-process loss. Per-sample terms (regression)
average the same way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from pacx.engine import Trainer, TrainerConfig, distributed_context, make_loader, seed_everything, unwrap_model
from tests.engine._toy import PairDataset, TinyContrastive, contrastive_step, state_numpy
from tests.utils import run_distributed

pytestmark = pytest.mark.distributed

GLOBAL_BATCH = 8
TRAINER = dict(epochs=1, lr=0.05, weight_decay=0.01, progress=False, tensorboard=False, log_every=1)
HAS_DISTILLER = importlib.util.find_spec("pacx.nets.distiller") is not None


def _raw_one_step(batch: dict[str, torch.Tensor], ddp: bool) -> dict:
    seed_everything(0)
    model = TinyContrastive().double()
    runner = DistributedDataParallel(model) if ddp else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    runner(batch).backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    opt.step()
    return {"weights": state_numpy(model), "grads": grads}


def _fit_toy(out_dir: Path) -> dict:
    seed_everything(0)
    model = TinyContrastive().double()
    loader = make_loader(PairDataset(n=32), GLOBAL_BATCH, shuffle=True, seed=5)
    result = Trainer(TrainerConfig(max_steps=3, **TRAINER), out_dir).fit(model, loader, contrastive_step)
    return {"weights": state_numpy(model), "loss": result["metrics"]["loss"]}


def _val_step(model, batch):
    # Per-sample terms only, so the mean over the validation set does not depend on how the
    # samples are split into batches and ranks.
    z = unwrap_model(model).enc_a(batch["a"])
    return (z**2).mean(), {"first": z[:, 0].mean()}


def _fit_toy_validated(out_dir: Path) -> dict:
    seed_everything(0)
    model = TinyContrastive().double()
    loader = make_loader(PairDataset(n=32), GLOBAL_BATCH, shuffle=True, seed=5)
    # 10 samples: 5 per rank in batches of 2, 2, 1; one process: 4, 4, 2
    val = make_loader(PairDataset(n=10, seed=3), 4, shuffle=False, drop_last=False)
    result = Trainer(TrainerConfig(max_steps=3, **TRAINER), out_dir).fit(
        model, loader, contrastive_step, val_loader=val, val_step_fn=_val_step
    )
    metrics = result["metrics"]
    return {"weights": state_numpy(model), "val": (metrics["val_loss"], metrics["val_first"]), "best": result["best"]}


class _DistillerData(torch.utils.data.Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(1)
        self.cxr = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
        self.ecg = torch.randn(n, 8, generator=g, dtype=torch.float64)
        self.labs = torch.randn(n, 6, generator=g, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.cxr)

    def __getitem__(self, i: int) -> dict:
        return {"cxr": self.cxr[i], "teacher_embeddings": {"ecg": self.ecg[i], "labs": self.labs[i]}}


def _fit_distiller(out_dir: Path) -> dict:
    from timm.models.vision_transformer import VisionTransformer

    from pacx.nets import PaCXDistiller

    seed_everything(0)
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0)
    # Dropout 0 in heads and LoRA: the two runs draw different masks otherwise.
    model = PaCXDistiller(vit, {"ecg": 8, "labs": 6}, shared_dim=8, head_dropout=0.0, lora={"dropout": 0.0}).double()
    loader = make_loader(_DistillerData(), GLOBAL_BATCH, shuffle=True, seed=2)
    before = state_numpy(model)

    def step_fn(net, batch):
        return net(batch["cxr"], batch["teacher_embeddings"])

    Trainer(TrainerConfig(max_steps=1, **TRAINER), out_dir).fit(model, loader, step_fn)
    after = state_numpy(model)
    changed = sorted(k for k in after if not (after[k] == before[k]).all())
    return {"weights": after, "changed": changed}


def _worker(rank: int, world_size: int, tmp: str) -> dict:
    full = next(iter(torch.utils.data.DataLoader(PairDataset(n=GLOBAL_BATCH), batch_size=GLOBAL_BATCH)))
    per_rank = GLOBAL_BATCH // world_size
    local = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in full.items()}
    with distributed_context() as info:  # joins the existing group and leaves it alone on exit
        out = {"context": (info.rank, info.world_size)}
    out["group_still_initialised"] = torch.distributed.is_initialized()
    out.update(raw=_raw_one_step(local, ddp=True), toy=_fit_toy(Path(tmp) / "toy"))
    out["validated"] = _fit_toy_validated(Path(tmp) / "validated")
    if HAS_DISTILLER:
        out["distiller"] = _fit_distiller(Path(tmp) / "distiller")
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return run_distributed(_worker, world_size=2, args=(str(tmp),), timeout=240), tmp


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]), rtol=0, atol=1e-10, msg=key)


def test_distributed_context_inside_an_existing_group(two_ranks):
    results, _ = two_ranks
    assert [r["context"] for r in results] == [(0, 2), (1, 2)]
    assert all(r["group_still_initialised"] for r in results)


def test_one_ddp_step_with_gathered_negatives_equals_single_process(two_ranks):
    results, _ = two_ranks
    full = next(iter(torch.utils.data.DataLoader(PairDataset(n=GLOBAL_BATCH), batch_size=GLOBAL_BATCH)))
    single = _raw_one_step(full, ddp=False)
    for rank_result in results:
        _assert_close(rank_result["raw"]["grads"], single["grads"])
        _assert_close(rank_result["raw"]["weights"], single["weights"])


def test_trainer_two_ranks_equals_one_rank(two_ranks, tmp_path):
    results, tmp = two_ranks
    single = _fit_toy(tmp_path / "single")
    _assert_close(results[0]["toy"]["weights"], single["weights"])
    _assert_close(results[1]["toy"]["weights"], single["weights"])
    assert results[0]["toy"]["loss"] == pytest.approx(single["loss"], abs=1e-10)  # logged loss: mean over ranks
    assert (tmp / "toy" / "final" / "model.safetensors").is_file()  # rank 0 wrote it


def test_validation_two_ranks_equals_one_rank(two_ranks, tmp_path):
    results, tmp = two_ranks
    single = _fit_toy_validated(tmp_path / "single")
    for rank_result in results:  # every rank gets the mean over all validation samples
        _assert_close(rank_result["validated"]["weights"], single["weights"])
        assert rank_result["validated"]["val"] == pytest.approx(single["val"], abs=1e-10)
        assert rank_result["validated"]["best"]["step"] == single["best"]["step"] == 3
    assert (tmp / "validated" / "best" / "model.safetensors").is_file()


@pytest.mark.skipif(not HAS_DISTILLER, reason="pacx.nets.PaCXDistiller not available")
def test_distiller_step_two_ranks_equals_one_rank(two_ranks, tmp_path):
    results, _ = two_ranks
    single = _fit_distiller(tmp_path / "single")
    _assert_close(results[0]["distiller"]["weights"], single["weights"])
    _assert_close(results[1]["distiller"]["weights"], single["weights"])
    # the step moved the LoRA factors, the heads and the temperature, not a trivial equality
    changed = single["changed"]
    assert any("lora_B" in k for k in changed) and any(k.startswith("proj.") for k in changed)
    assert any("logit_scale" in k for k in changed) and results[0]["distiller"]["changed"] == changed
