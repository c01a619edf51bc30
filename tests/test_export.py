"""export.py: a student becomes an open_clip folder that open_clip, CLIP_benchmark and zeroshot.py load and that
computes exactly what the student and the teacher compute; students open_clip cannot express are refused."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import common, domains
import export
import kit
from helpers import models
import zeroshot

# timm name -> input size. test_vit at 160 px, timm's default: the size open_clip's timm tower builds it at.
STUDENTS = {"test_efficientnet": 64, "test_vit": 160}


def make_run(folder, teacher, timm_name, size, embed_dim=None, seed=0):
    """A finished distill.py run folder: student.pt of a random student whose every weight matters."""
    torch.manual_seed(seed)
    student = models.build_student(timm_name, embed_dim or teacher.embed_dim, image_size=size).eval()
    with torch.no_grad():
        for name, buf in student.named_buffers():
            if name.endswith(("running_mean", "running_var")):  # BN statistics must travel too, not stay 0 / 1
                buf.copy_(torch.rand_like(buf) + 0.5)
        student.proj.bias.normal_()  # so must the projection's bias
    names, templates = domains.CLASSNAMES["pets"], domains.PAPER_TEMPLATES["pets"]
    text = zeroshot.build_classifier(teacher, names, templates) if embed_dim is None else None
    ckpt = models.student_checkpoint(student, teacher, classnames=names, templates=templates, dataset="pets",
                                     class_text_emb=text)
    common.save_torch(ckpt, folder / "student.pt")
    return student


def load_folder(folder):
    import open_clip
    name = "local-dir:" + str(folder)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.fixture
def teacher(tiny_teacher):
    return models.load_teacher(tiny_teacher, None)


# ----------------------------------------------------------------------------------------------
# the folder is the student's image tower and the teacher's text tower

@pytest.mark.parametrize("timm_name", STUDENTS)
def test_folder_computes_student_and_teacher(timm_name, teacher, tmp_path):
    student = make_run(tmp_path, teacher, timm_name, STUDENTS[timm_name])
    folder = export.export_open_clip(student, teacher, tmp_path / "open_clip")
    assert sorted(os.listdir(folder)) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["open_clip", "student.pt"]  # no temp folder left behind
    # readable by others like every other output: the user's umask decides (0644 under umask 022)
    umask = os.umask(0)
    os.umask(umask)
    assert {(folder / f).stat().st_mode & 0o777 for f in os.listdir(folder)} == {0o666 & ~umask}
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["vision_cfg"]["timm_model_name"] == timm_name
    assert cfg["model_cfg"]["text_cfg"] == kit.TINY_TEACHER_CFG["model_cfg"]["text_cfg"]
    model, preprocess, tokenizer = load_folder(folder)
    images = torch.randn(4, 3, STUDENTS[timm_name], STUDENTS[timm_name], generator=torch.Generator().manual_seed(1))
    prompts = ["a photo of a beagle, a type of pet.", "a bad photo of a sphynx."]
    with torch.no_grad():
        assert (model.encode_image(images) - student(images)).abs().max() <= 1e-5  # (4, D)
        tokens = teacher.tokenizer(prompts)
        assert torch.equal(tokenizer(prompts), tokens)
        assert (model.encode_text(tokens) - teacher.model.encode_text(tokens)).abs().max() <= 1e-5
    assert torch.equal(model.logit_scale, teacher.model.logit_scale)
    assert model.visual.preprocess_cfg["size"] == (STUDENTS[timm_name],) * 2
    assert tuple(model.visual.preprocess_cfg["mean"]) == teacher.mean
    student_params = sum(p.numel() for p in student.parameters())
    assert sum(p.numel() for p in model.visual.parameters()) == student_params  # nothing added, nothing lost


@pytest.mark.parametrize("timm_name", STUDENTS)
def test_clip_benchmark_and_zeroshot_agree_with_student_pt(timm_name, teacher, fake_root, tmp_path):
    cb = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    from clip_benchmark.datasets.builder import build_dataset
    from sklearn.metrics import balanced_accuracy_score
    root, _ = fake_root
    make_run(tmp_path, teacher, timm_name, STUDENTS[timm_name])
    assert export.main([str(tmp_path)]) == tmp_path / "open_clip"
    want = zeroshot.evaluate(str(tmp_path / "student.pt"), "pets", data_root=str(root), batch_size=8, workers=0,
                             progress=False)["metrics"]
    # CLIP_benchmark, the standard harness, on the folder as open_clip loads it
    model, preprocess, tokenizer = load_folder(tmp_path / "open_clip")
    ds = build_dataset("pets", root=str(root), transform=preprocess, split="test", download=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    clf = cb.zero_shot_classifier(model, tokenizer, ds.classes, domains.PAPER_TEMPLATES["pets"], "cpu", amp=False)
    logits, target = cb.run_classification(model, clf, loader, "cpu", amp=False)
    pred = logits.argmax(1)
    got = {"acc1": (pred == target).sum().item() / len(target),
           "acc5": logits.topk(5, 1).indices.eq(target[:, None]).sum().item() / len(target),
           "mean_per_class_recall": balanced_accuracy_score(target.numpy(), pred.numpy())}
    assert got == want
    # zeroshot.py on the folder, as an open_clip model
    out = tmp_path / "r.json"
    res = zeroshot.main(["--model", f"local-dir:{tmp_path / 'open_clip'}", "--dataset", "pets", "--data-root",
                         str(root), "--batch-size", "8", "--workers", "0", "--device", "cpu", "--out", str(out)])
    assert res["metrics"] == want and res["n"] == 37


def test_text_tower_in_half_precision(teacher, tmp_path):
    from safetensors.torch import load_file
    student = make_run(tmp_path, teacher, "test_efficientnet", 64)
    full = export.export_open_clip(student, teacher, tmp_path / "fp32")
    half = export.export_open_clip(student, teacher, tmp_path / "fp16", text_dtype="float16")
    weights = load_file(half / "open_clip_model.safetensors")
    assert {str(v.dtype) for k, v in weights.items() if k.startswith("visual.") and v.is_floating_point()} == \
        {"torch.float32"}
    assert {str(v.dtype) for k, v in weights.items() if not k.startswith(("visual.", "logit_"))} == {"torch.float16"}
    text_bytes = sum(v.numel() * v.element_size() for k, v in weights.items() if not k.startswith("visual."))
    size = {f: (f / "open_clip_model.safetensors").stat().st_size for f in (full, half)}
    assert size[full] - size[half] == pytest.approx(text_bytes, rel=1e-3)  # the text tower halved, nothing else
    model, _, _ = load_folder(half)
    rounded = {k: (v.half().float() if not k.startswith("logit_") else v)
               for k, v in teacher.model.state_dict().items() if not k.startswith("visual.")}
    reference = load_folder(full)[0]
    reference.load_state_dict({**rounded, **{k: v for k, v in reference.state_dict().items()
                                             if k.startswith("visual.")}})
    tokens = teacher.tokenizer(["a photo of a pug, a type of pet."])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens), reference.encode_text(tokens))  # the teacher, rounded
        assert (model.encode_image(images) - student(images)).abs().max() <= 1e-5      # the image tower untouched
        cos = F.cosine_similarity(model.encode_text(tokens), teacher.model.encode_text(tokens))
    assert cos.item() > 0.999


def test_check_close_hand_computed():
    want = torch.tensor([[0.5, -2.0], [4.0, 0.0]])  # max |want| = 4: the allowed difference is 4e-5
    assert export.check_close("x", want + 3e-5, want) == pytest.approx(3e-5, rel=1e-2)
    with pytest.raises(common.UserError, match="differs .* by up to 5e-05"):
        export.check_close("x", want + torch.tensor([[0.0, 0.0], [0.0, 5e-5]]), want)
    small = torch.tensor([0.1, 0.2])  # |want| < 1: the allowed difference stays 1e-5
    with pytest.raises(common.UserError, match="allowed 1e-05"):
        export.check_close("x", small + 2e-5, small)


# ----------------------------------------------------------------------------------------------
# the command line

def test_cli_overwrite_and_teacher_override(teacher, tiny_teacher, tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, teacher, "test_efficientnet", 64)
    export.main([str(run), "--text-dtype", "float16"])
    weights = run / "open_clip" / "open_clip_model.safetensors"
    before = weights.read_bytes()
    kit.exits_with_one_line(export.main, [str(run)], capsys, "holds another export")
    assert weights.read_bytes() == before
    export.main([str(run), "--overwrite"])  # now fp32
    assert weights.read_bytes() != before and sorted(os.listdir(run)) == ["open_clip", "student.pt"]
    # the same export again (what `python export.py RUN` does after distill.py wrote open_clip/): left as it is
    stamp = weights.stat().st_mtime_ns
    assert export.main([str(run)]) == run / "open_clip" and weights.stat().st_mtime_ns == stamp
    assert "already holds this export" in capsys.readouterr().out
    assert sorted(os.listdir(run)) == ["open_clip", "student.pt"]  # no temp folder left behind
    # a student.pt whose teacher moved: one line naming it; --teacher points to the new place
    ckpt = torch.load(run / "student.pt", weights_only=False)
    ckpt["teacher"] = {"model": "local-dir:" + str(tmp_path / "moved"), "pretrained": None}
    common.save_torch(ckpt, run / "student.pt")
    kit.exits_with_one_line(export.main, [str(run), "--overwrite"], capsys, "does not exist")
    out = tmp_path / "elsewhere" / "pets"
    assert export.main([str(run / "student.pt"), "--teacher", tiny_teacher, "--out", str(out)]) == out
    assert load_folder(out)[0].encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, teacher.embed_dim)


def test_bad_inputs_write_nothing(teacher, tmp_path, capsys):
    def refused(run, expect, *flags):
        before = sorted(os.listdir(run)) if run.is_dir() else None
        msg = kit.exits_with_one_line(export.main, [str(run), *flags], capsys, expect)
        assert (sorted(os.listdir(run)) if run.is_dir() else None) == before
        return msg

    refused(tmp_path / "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "has no student.pt, so it is not a finished distill.py run")
    (tmp_path / "unfinished").mkdir()
    torch.save({"step": 10}, tmp_path / "unfinished" / "last.pt")
    refused(tmp_path / "unfinished", "the run has not finished")
    (tmp_path / "other").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other" / "student.pt")
    refused(tmp_path / "other", "not a student checkpoint")
    # a ViT at another size than timm's default: open_clip's tower cannot pass img_size, weights do not fit
    make_run(tmp_path / "vit32", teacher, "test_vit", 32)
    msg = refused(tmp_path / "vit32", "open_clip cannot express")
    assert "default input size 160 px" in msg and "trunk.pos_embed" in msg and "--image-size 160" in msg
    assert sorted(os.listdir(tmp_path / "vit32")) == ["student.pt"]
    # weights that fit but a tower that cannot run the student's input: found by the check after writing
    make_run(tmp_path / "relpos", teacher, "test_vit_relpos", 64)
    msg = refused(tmp_path / "relpos", "open_clip cannot express")
    assert "fails on the student's 64 px input" in msg
    assert sorted(os.listdir(tmp_path / "relpos")) == ["student.pt"]
    # a student that embeds into another space than its teacher's
    make_run(tmp_path / "dim", teacher, "test_efficientnet", 64, embed_dim=16)
    refused(tmp_path / "dim", "embeds into 16 dimensions")
    # the output exists as a file
    make_run(tmp_path / "ok", teacher, "test_efficientnet", 64)
    (tmp_path / "ok" / "open_clip").write_text("x")
    refused(tmp_path / "ok", "is a file", "--overwrite")
    kit.exits_with_one_line(export.main, [], capsys, "give the run to export")
