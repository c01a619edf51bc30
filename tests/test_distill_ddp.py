"""distill.py under torchrun: two processes train like one (BatchNorm synced, the cache built in two shares), and
the pieces a GPU run needs, checked on a CPU (synced BatchNorm, this device's RNG state)."""
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import distill
import kit
from helpers import common, devices, models, run_state
from test_distill import ROOT, run_args, weights


@pytest.fixture
def synth(tmp_path):
    return kit.make_synth_folder(tmp_path / "synth", per_class=8)  # 3 classes x 8 images, 40x48 px


def test_torchrun_two_processes_match_one_with_batchnorm(tiny_teacher, synth, tmp_path):
    # the 2-process run builds its folder's cache in two shares; the 1-process run builds its own copy's. The
    # student has BatchNorm layers: without synced statistics the weights differ by ~4e-3 after 4 steps
    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)
    args = ["--loss", "mix", "--alpha", "0.5", "--batch-size", "12",  # the contrastive term needs all 12 images
            "--student", "test_efficientnet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "distill.py", *run_args(synth, tiny_teacher, tmp_path / "ddp", *args, steps=4)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    distill.main(run_args(copy, tiny_teacher, tmp_path / "one", *args, steps=4))
    [c2] = (synth / "cache").glob("*.pt")
    [c1] = (copy / "cache").glob("*.pt")
    e2, e1 = torch.load(c2, weights_only=True)["emb"], torch.load(c1, weights_only=True)["emb"]
    assert (e2.abs().sum(-1) > 0).all()  # every image's views came back from its rank
    torch.testing.assert_close(e2.float(), e1.float(), rtol=2e-3, atol=2e-3)
    w2, w1 = weights(tmp_path / "ddp" / "student.pt"), weights(tmp_path / "one" / "student.pt")
    # BatchNorm statistics: max difference 1.2e-4 synced, 0.34 when each rank normalises its own half batch
    stats = [k for k in w1 if "running_" in k]
    assert stats and max((w2[k] - w1[k]).abs().max().item() for k in stats) < 1e-3
    # the students compute the same embeddings: max difference 3.5e-4 synced, 0.085 without. (Single weights
    # are no measure: a bias right before a BatchNorm has a zero gradient, whose float noise Adam's first steps
    # turn into +-lr moves.)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    emb = []
    for w in (w1, w2):
        student = models.build_student("test_efficientnet", 32, image_size=32).eval()
        student.load_state_dict(w)
        with torch.no_grad():
            emb.append(torch.nn.functional.normalize(student(x), dim=-1))
    assert (emb[0] - emb[1]).abs().max() < 5e-3
    moved = sum((w1[k] - w0).abs().sum() for k, w0 in weights_at_init(tiny_teacher, "test_efficientnet").items()
                if w0.is_floating_point())
    assert moved > 0  # the runs trained at all


def weights_at_init(tiny_teacher, student="test_vit"):
    common.seed_everything(0)
    return models.build_student(student, models.load_teacher(tiny_teacher, None).embed_dim,
                                image_size=32).state_dict()


def test_gpu_runs_convert_batchnorm_to_synced_batchnorm_keeping_activations():
    import timm.layers
    model = models.build_student("test_efficientnet", 32, image_size=32)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    acts = [type(m.act) for m in model.modules() if isinstance(m, timm.layers.BatchNormAct2d)]
    synced = devices.sync_batchnorm(model, devices.Dist(world_size=2, device=torch.device("cuda", 0)))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    assert [type(m.act) for m in synced.modules() if isinstance(m, timm.layers.SyncBatchNormAct)] == acts
    assert devices.sync_batchnorm(model, devices.Dist()) is model  # one process: nothing to sync


def test_cuda_rng_state_is_this_devices_and_restores_on_fewer_gpus(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate(), "cuda": [torch.tensor([1]), torch.tensor([2])]}
    run_state.set_rng_state(state, torch.device("cuda", 0))  # saved on 2 GPUs (old format), resumed on 1
    assert restored == [(state["cuda"][0], torch.device("cuda", 0))]
    run_state.set_rng_state(dict(state, cuda=torch.tensor([3])), torch.device("cuda", 0))  # one state per rank
    assert restored[-1][0].tolist() == [3]
    assert run_state.rng_state(torch.device("cpu"))["cuda"] is None
