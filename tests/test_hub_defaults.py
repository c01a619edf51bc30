"""The defaults as users run them: the teacher named by open_clip name + tag (ViT-B-32 + datacomp_xl_s13b_b90k),
found by open_clip in the Hugging Face cache, offline. The `fake_hub` fixture puts a tiny CLIP there, under the
real repo and file name, and swaps open_clip's ViT-B-32 architecture for the tiny one in this process."""
import json

import huggingface_hub.constants as hc
import open_clip
import pytest
import torch

from helpers import common
import distill
import kit
from helpers import models
import zeroshot


def test_defaults_are_the_teacher_under_test():
    assert (zeroshot.Args().model, zeroshot.Args().pretrained) == kit.DEFAULT_TEACHER
    assert (distill.Args().teacher, distill.Args().teacher_pretrained) == kit.DEFAULT_TEACHER


def test_default_teacher_loads_its_weights_from_the_hub_cache(fake_hub, tiny_teacher):
    teacher = models.load_teacher()  # ViT-B-32 + datacomp_xl_s13b_b90k
    assert teacher.ident == {"model": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"}
    assert (teacher.image_size, teacher.embed_dim) == (64, 32)
    ref = models.load_teacher(tiny_teacher, None).model.state_dict()
    got = teacher.model.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)  # the cached file, not random


def test_zeroshot_with_default_model(fake_hub, tiny_teacher, fake_root, tmp_path):
    root, _ = fake_root
    flags = ["--dataset", "pets", "--data-root", str(root), "--device", "cpu", "--workers", "0", "--batch-size", "16"]
    res = zeroshot.main(flags + ["--out", str(tmp_path / "default.json")])
    assert res["model"] == "ViT-B-32_datacomp_xl_s13b_b90k" and res["n"] == 37
    assert res["model_info"]["arch"] == "ViT-B-32" and res["model_info"]["pretrained"] == "datacomp_xl_s13b_b90k"
    # the same weights and preprocessing loaded from the tiny folder give the same numbers
    same = zeroshot.main(flags + ["--model", tiny_teacher, "--out", str(tmp_path / "local.json")])
    assert res["metrics"] == same["metrics"]
    assert json.loads((tmp_path / "default.json").read_text())["metrics"] == res["metrics"]


def test_distill_with_default_teacher(fake_hub, tmp_path):
    synth = kit.make_synth_folder(tmp_path / "synth", per_class=4)  # 3 classes x 4 images
    out = tmp_path / "run"
    distill.main(["--loss", "l2", "--data", str(synth), "--steps", "5", "--student", "test_vit", "--batch-size", "4",
                  "--views", "1", "--workers", "0", "--device", "cpu", "--out", str(out)])
    ckpt = torch.load(out / "student.pt", map_location="cpu", weights_only=False)
    assert ckpt["teacher"] == {"model": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"}
    assert ckpt["step"] == 5 and ckpt["image_size"] == 64 and ckpt["class_text_emb"].shape == (3, 32)


def test_fake_hub_does_not_leak():
    """Runs after the tests above (file order): the real ViT-B-32 and the real cache are back."""
    assert open_clip.get_model_config("ViT-B-32")["vision_cfg"]["width"] == 768
    assert not str(hc.HF_HUB_CACHE).endswith("hf_hub")
    with pytest.raises(common.UserError, match="not in the local cache"):
        models.load_teacher()
