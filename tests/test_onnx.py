"""export.py onnx: the student and its class text embeddings as one ONNX graph that onnxruntime runs as PyTorch
does (checked before it is written), int8 kept only when it agrees, zeroshot.py on the graph, the README's
deployment snippet without torch, and bad inputs refused with one line."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import export
import kit
import zeroshot
from helpers import models, onnx_export
from test_export import make_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64  # test_efficientnet at the tiny teacher's resolution


@pytest.fixture(scope="module")
def run(tiny_teacher, tmp_path_factory):
    """A finished run (test_efficientnet, Pets classes) trained on a synth.py folder, exported fp32 + int8."""
    folder = tmp_path_factory.mktemp("run")
    images = kit.make_synth_folder(folder.parent / "synth_pets", dataset="pets", classnames=kit.domains.CLASSNAMES[
        "pets"], per_class=1, size=(72, 80))
    teacher = models.load_teacher(tiny_teacher, None)
    student = make_run(folder, teacher, "test_efficientnet", SIZE)
    ckpt = torch.load(folder / "student.pt", weights_only=False)
    ckpt["args"] = {"data": str(images)}
    torch.save(ckpt, folder / "student.pt")
    export.main(["onnx", str(folder), "--int8", "--calib-images", "16", "--min-agreement", "0.5"])
    return folder, student, ckpt, teacher


def pytorch_logits(student, ckpt, pictures):
    """What zeroshot.py computes for student.pt: eval transform, student, unit embedding, 100 * emb @ text^T."""
    x = torch.stack([models.eval_transform(SIZE, ckpt["mean"], ckpt["std"])(p) for p in pictures])
    with torch.no_grad():
        emb = F.normalize(student(x), dim=-1)
    return emb.numpy(), (100 * emb @ ckpt["class_text_emb"].t()).numpy()


def test_folder_is_checked_and_complete(run):
    folder, student, ckpt, _ = run
    out = folder / "onnx"
    assert sorted(os.listdir(out)) == ["classes.json", "classifier.int8.onnx", "classifier.onnx", "onnx.json",
                                       "preprocess.json"]
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no temp folder left behind
    record = json.loads((out / "onnx.json").read_text())
    assert record["check"]["images"] == 32 and record["check"]["min_cosine"] >= 0.9999 and record["opset"] >= 18
    assert record["int8"]["images"] > 0 and record["int8"]["kept"] and set(record["sizes_mb"]) == {
        "classifier.onnx", "classifier.int8.onnx"}
    assert json.loads((out / "classes.json").read_text()) == ckpt["classnames"]
    pp = json.loads((out / "preprocess.json").read_text())
    assert pp["resize"] == SIZE and pp["mean"] == ckpt["mean"] and pp["interpolation"] == "bicubic"
    # fresh images, not the check's, of another size and aspect: the graph as deployed vs zeroshot.py's PyTorch path
    rng = np.random.default_rng(7)
    pictures = [kit.random_image(rng, size=(90 + 7 * i, 70 + 11 * i), label=i) for i in range(6)]
    sess = onnx_export.session(out / "classifier.onnx")
    x = np.stack([np.asarray(onnx_export.crop_transform(SIZE)(p)) for p in pictures])  # (6, S, S, 3) uint8
    p = onnx_export.compare(pytorch_logits(student, ckpt, pictures), tuple(sess.run(None, {"images": x})))
    assert p["min_cosine"] >= 0.9999 and p["top1_agree"] == 1 and p["max_logit_diff"] <= onnx_export.LOGIT_TOL
    assert sess.run(None, {"images": x[:1]})[1].shape == (1, len(ckpt["classnames"]))  # dynamic batch


def test_zeroshot_on_onnx_equals_open_clip_folder(run, fake_root, tmp_path, capsys):
    folder, student, _, teacher = run
    export.export_open_clip(student, teacher, tmp_path / "open_clip")
    root = str(fake_root[0])
    common = ["--dataset", "pets", "--data-root", root, "--workers", "0", "--batch-size", "8"]
    got = {m: zeroshot.main(["--model", spec, "--out", str(tmp_path / f"{m}.json")] + common)
           for m, spec in [("onnx", str(folder / "onnx" / "classifier.onnx")),
                           ("open_clip", f"local-dir:{tmp_path / 'open_clip'}"),
                           ("int8", str(folder / "onnx" / "classifier.int8.onnx"))]}
    assert got["onnx"]["metrics"] == got["open_clip"]["metrics"] and got["onnx"]["n"] == len(fake_root[1]["pets"])
    assert got["onnx"]["model_info"]["format"] == "onnx" and got["int8"]["n"] == got["onnx"]["n"]
    # the class matrix is fixed: another dataset's classes are refused
    kit.exits_with_one_line(zeroshot.main, ["--model", str(folder / "onnx" / "classifier.onnx"), "--dataset",
                                            "flowers", "--out", str(tmp_path / "f.json")] + common[2:], capsys,
                            "exported for other classes")


def test_corrupted_evaluation_of_the_onnx_equals_the_open_clip_folder(run, fake_root, tmp_path):
    """--corruption corrupts the same cropped pixels for the graph (uint8 in) as for the PyTorch model."""
    folder, student, _, teacher = run
    export.export_open_clip(student, teacher, tmp_path / "open_clip")
    common = ["--dataset", "pets", "--data-root", str(fake_root[0]), "--workers", "0", "--batch-size", "8",
              "--corruption", "gaussian_noise", "--severity", "3"]
    got = {m: zeroshot.main(["--model", spec, "--out", str(tmp_path / f"{m}.json")] + common)
           for m, spec in [("onnx", str(folder / "onnx" / "classifier.onnx")),
                           ("open_clip", f"local-dir:{tmp_path / 'open_clip'}")]}
    assert got["onnx"]["corruption"] == "gaussian_noise" and got["onnx"]["severity"] == 3
    assert got["onnx"]["metrics"] == got["open_clip"]["metrics"] and got["onnx"]["n"] == got["open_clip"]["n"]


def readme_snippet():
    text = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"<!-- deploy snippet -->\n```python\n(.*?)```", text, re.S)
    assert code, "README.md has no deployment snippet"
    return code.group(1)


def test_readme_snippet_runs_without_torch(run, tmp_path):
    folder, student, ckpt, _ = run
    picture = kit.random_image(np.random.default_rng(3), size=(101, 77), label=5)
    picture.save(tmp_path / "photo.png")
    (tmp_path / "classify.py").write_text(readme_snippet())
    block = "import sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"
    done = subprocess.run([sys.executable, "-c", block, str(tmp_path / "classify.py"), str(folder / "onnx"),
                           str(tmp_path / "photo.png")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    _, logits = pytorch_logits(student, ckpt, [picture.convert("RGB")])
    top3 = [ckpt["classnames"][i] for i in np.argsort(-logits[0])[:3]]
    assert [line.rsplit(":", 1)[0] for line in lines] == top3, (lines, top3)


def test_bad_inputs_write_nothing(run, tmp_path, capsys, monkeypatch):
    folder, *_ = run
    kit.exits_with_one_line(export.main, ["onnx", str(tmp_path)], capsys, "no student.pt")
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    kit.exits_with_one_line(zeroshot.main, ["--model", str(tmp_path / "x.onnx"), "--dataset", "pets"], capsys,
                            "not a readable ONNX model")
    kit.simulate_read_only(monkeypatch, folder)
    kit.exits_with_one_line(export.main, ["onnx", str(folder), "--out", str(folder / "onnx2")], capsys,
                            "not a writable folder")
    monkeypatch.undo()

    def untraceable(self, images):  # an op torch.onnx has no translation for
        return self.proj(self.encoder(images)) + torch.linalg.svdvals(images[:, 0]).sum()
    monkeypatch.setattr(models.Student, "forward", untraceable)
    kit.exits_with_one_line(export.main, ["onnx", str(folder), "--out", str(tmp_path / "o")], capsys,
                            "torch.onnx cannot export")
    assert sorted(os.listdir(tmp_path)) == ["x.onnx"]


@pytest.mark.skipif(not os.environ.get("ZSD_REAL_SIZE_ONNX"), reason="real-size students: ~1.5 min of exports on 2 "
                    "cores; run with ZSD_REAL_SIZE_ONNX=1")
@pytest.mark.parametrize("timm_name", ["tiny_vit_11m_224", "efficientnet_b0"])
def test_real_size_parity_on_fresh_images(timm_name, tmp_path):
    """A ViT and a CNN student at 224 px, random weights: the exported graph vs the PyTorch eval path."""
    torch.manual_seed(0)
    student = models.build_student(timm_name, 512, image_size=224).eval()
    text = F.normalize(torch.randn(37, 512), dim=-1)
    mean, std = models.OPENAI_CLIP_MEAN, models.OPENAI_CLIP_STD
    onnx_export.export_graph(onnx_export.Classifier(student, text, mean, std), 224, tmp_path / "c.onnx", {})
    rng = np.random.default_rng(11)
    pictures = [kit.random_image(rng, size=(250 + 9 * i, 230 + 13 * i), label=i) for i in range(4)]
    x = torch.stack([models.eval_transform(224, mean, std)(p) for p in pictures])
    with torch.no_grad():
        emb = F.normalize(student(x), dim=-1)
    ref = (emb.numpy(), (100 * emb @ text.t()).numpy())
    u8 = np.stack([np.asarray(onnx_export.crop_transform(224)(p)) for p in pictures])
    p = onnx_export.compare(ref, tuple(onnx_export.session(tmp_path / "c.onnx").run(None, {"images": u8})))
    assert p["min_cosine"] >= 0.9999 and p["top1_agree"] == 1, p
