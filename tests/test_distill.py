"""distill.py: losses by hand, the text targets, a tiny run that learns and is evaluated by zeroshot.py, bit-exact
resume, and one-line errors for bad input. Elsewhere: torchrun in test_distill_ddp.py, the teacher cache in
test_teacher_cache.py, the image store and crops in test_image_store.py."""
import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from helpers import models
import distill
import kit
from helpers import run_state, views
import zeroshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_args(data, teacher, out, *extra, steps=6):
    """A tiny CPU run: test_vit student at 32 px, batch 8, 2 cached views, no worker processes."""
    return ["--data", str(data), "--teacher", teacher, "--out", str(out), "--student", "test_vit",
            "--image-size", "32", "--batch-size", "8", "--views", "2", "--steps", str(steps), "--workers", "0",
            "--device", "cpu", "--log-every", "1", "--save-every", "3", *extra]


def weights(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["state_dict"]  # the same key in last.pt and student.pt


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def log_steps(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def synth(tmp_path):
    return kit.make_synth_folder(tmp_path / "synth", per_class=8)  # 3 classes x 8 images, 40x48 px


# ----------------------------------------------------------------------------------------------
# losses, by hand

def test_l2_loss_hand_computed():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    # row 0: same direction -> distance 0; row 1: (1, 0) vs (0, 1) -> sqrt(2). Mean: sqrt(2) / 2 (not squared: 1)
    assert distill.l2_loss(s, t).item() == pytest.approx(math.sqrt(2) / 2, abs=1e-6)
    assert distill.l2_loss(s, 5 * s).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_and_mix_hand_computed():
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # class 0 -> (1, 0), class 1 -> (0, 1) after normalising
    s = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
    # labels 0, 1 and tau 1: logits [[1, 0], [0, 1]]; each CE row = -log(e / (e + 1)) = log(1 + e^-1), both ways.
    # Rows 0, 1 are also the caption case (--text caption): one text row per image, arange(B)
    y = torch.tensor([0, 1])
    assert distill.contrastive_loss(s, text, y, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # tau 0.5 doubles the logits: log(1 + e^-2); tau 0.01: ~0
    assert distill.contrastive_loss(s, text, y, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    assert distill.contrastive_loss(s, text, y, 0.01).item() == pytest.approx(0.0, abs=1e-6)
    # both images of class 0 share its prompt and are false negatives. logits s u^T = [[1, 1], [0, 0]]:
    # image->text rows: log 2, log 2; text->image rows of [[1, 0], [1, 0]]: log(1 + e^-1), log(1 + e)
    same = torch.tensor([0, 0])
    expected = 0.5 * (math.log(2) + 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.e)))  # 0.753204
    assert distill.contrastive_loss(s, text, same, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.753204, abs=1e-6)
    # mix: (1 - alpha) * l2 + alpha * contrastive; teacher (1, 1) and (0, 1): l2 = (|(1,0)-(.7071,.7071)| + 0) / 2
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    l2 = math.sqrt((1 - math.sqrt(0.5)) ** 2 + 0.5) / 2
    mix = distill.LOSSES["mix"](s, t, text, y, 1.0, 0.25)
    assert mix.item() == pytest.approx(0.75 * l2 + 0.25 * math.log(1 + math.exp(-1)), abs=1e-6)
    assert distill.LOSSES["mix"](s, t, text, y, 1.0, 0.0).item() == pytest.approx(l2, abs=1e-6)  # alpha 0 = l2


def test_lr_schedules():
    args = distill.Args(lr=1.0, warmup=4, schedule="cosine")
    assert [distill.lr_at(s, args, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert distill.lr_at(54, args, 104) == pytest.approx(0.5)  # half-way through the cosine
    assert distill.lr_at(103, args, 104) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert distill.lr_at(50, distill.Args(lr=1.0), 104) == 1.0  # the paper's constant lr


def test_gradient_flows_only_into_the_student(tiny_teacher):
    teacher = models.load_teacher(tiny_teacher, None)
    student = models.build_student("test_vit", teacher.embed_dim, image_size=64)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        t_emb = teacher.model.encode_image(x)  # as distill.py runs the teacher (or reads the cache)
    text = torch.randn(3, teacher.embed_dim)
    for name, fn in distill.LOSSES.items():
        student.zero_grad()
        fn(student(x), t_emb, text, torch.tensor([0, 1, 2, 0]), 0.01, 0.5).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.proj.parameters()), name
    assert not t_emb.requires_grad and not any(p.requires_grad for p in teacher.model.parameters())
    assert all(p.grad is None for p in teacher.model.parameters())


# ----------------------------------------------------------------------------------------------
# a tiny run learns, and zeroshot.py evaluates its student.pt

def test_tiny_run_learns_and_zeroshot_evaluates(tiny_teacher, synth, tmp_path):
    out = tmp_path / "run"
    distill.main(run_args(synth, tiny_teacher, out, "--log-every", "20", "--views", "4", steps=200))
    losses = [r["loss"] for r in log_steps(out)]
    assert len(losses) == 10 and losses[-1] <= 0.5 * losses[0], losses
    teacher = models.load_teacher(tiny_teacher, None)
    ckpt = torch.load(out / "student.pt", weights_only=False)
    assert ckpt["classnames"] == ["circle", "square", "triangle"] and ckpt["step"] == 200
    expected = zeroshot.build_classifier(teacher, ckpt["classnames"], ckpt["templates"])
    torch.testing.assert_close(ckpt["class_text_emb"], expected)
    result = zeroshot.evaluate(str(out / "student.pt"), str(synth), workers=0, progress=False)
    assert result["n"] == 24 and 0.0 <= result["metrics"]["acc1"] <= 1.0
    assert {"dataset", "model", "templates", "n", "metrics"} <= result.keys()


def test_no_cache_contrastive_and_plain_folder(tiny_teacher, synth, tmp_path):
    # --no-cache: the teacher runs online at its own 64 px on the view the student sees at 32 px
    distill.main(run_args(synth, tiny_teacher, tmp_path / "a", "--no-cache", "--loss", "contrastive", steps=3))
    assert not list((synth / "cache").glob("*.pt"))  # no teacher cache (only the image check's record)
    assert all(math.isfinite(r["loss"]) for r in log_steps(tmp_path / "a"))
    distill.main(run_args(synth, tiny_teacher, tmp_path / "b", "--no-cache", "--loss", "contrastive", steps=3))
    assert_same(weights(tmp_path / "a" / "student.pt"), weights(tmp_path / "b" / "student.pt"))  # reproducible
    # any image folder, no labels: L2 only; --dataset still gives student.pt its class set
    plain = kit.make_image_folder(tmp_path / "plain", per_class=3)
    distill.main(run_args(plain, tiny_teacher, tmp_path / "c", "--dataset", "dtd", steps=2))
    ckpt = torch.load(tmp_path / "c" / "student.pt", weights_only=False)
    assert ckpt["dataset"] == "dtd" and ckpt["class_text_emb"].shape == (47, 32)


def test_eval_root_and_holdout(tiny_teacher, fake_root, tmp_path):
    root, labels = fake_root
    folder = kit.make_synth_folder(tmp_path / "pets", dataset="pets", per_class=1)  # 37 images
    out = tmp_path / "run"
    distill.main(run_args(folder, tiny_teacher, out, "--eval-root", str(root), "--holdout", "0.2", steps=2))
    real = json.loads((out / "eval_pets.json").read_text())
    held = json.loads((out / "eval_holdout.json").read_text())
    assert real["dataset"] == "pets" and real["n"] == len(labels["pets"]) and "acc1" in real["metrics"]
    assert held["n"] == 7 and "mean_per_class_recall" in held["metrics"]


# ----------------------------------------------------------------------------------------------
# resume

def test_resume_is_bit_identical_also_after_a_kill(tiny_teacher, synth, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    distill.main(run_args(synth, tiny_teacher, straight, steps=10))
    # N steps, then resume to 2N
    half = tmp_path / "half"
    distill.main(run_args(synth, tiny_teacher, half, steps=5))
    distill.main(run_args(synth, tiny_teacher, half, "--resume", steps=10))
    a, b = (torch.load(p / "last.pt", weights_only=False) for p in (straight, half))
    assert_same(a["state_dict"], b["state_dict"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # e.g. for drop-path students
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])
    assert [r["step"] for r in log_steps(half)] == list(range(1, 11))
    # killed at step 8 (between the checkpoints of steps 6 and 9): resume redoes 7.. and ends identical
    killed = tmp_path / "killed"
    monkeypatch.setitem(distill.LOSSES, "l2", kit.interrupted_at(8, distill.LOSSES["l2"]))
    with pytest.raises(SystemExit) as e:
        distill.main(run_args(synth, tiny_teacher, killed, steps=10))
    assert e.value.code == 130 and torch.load(killed / "last.pt", weights_only=False)["step"] == 6
    assert not (killed / "student.pt").exists()
    monkeypatch.undo()  # the plain loss again
    distill.main(run_args(synth, tiny_teacher, killed, "--resume", steps=10))
    assert_same(weights(straight / "student.pt"), weights(killed / "student.pt"))
    assert [r["step"] for r in log_steps(killed)] == list(range(1, 11))


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing good overwritten

def fails(argv, capsys, expect):
    kit.exits_with_one_line(distill.main, argv, capsys, expect)


@pytest.fixture(scope="module")
def finished(tiny_teacher, tmp_path_factory):
    """A synth folder, a finished run on it, and inputs that no run can use."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    synth = kit.make_synth_folder(tmp / "synth", per_class=8)
    distill.main(run_args(synth, tiny_teacher, tmp / "done", steps=3))
    (tmp / "empty").mkdir()
    kit.make_image_folder(tmp / "plain", per_class=2)
    torch.save(models.student_checkpoint(models.build_student("test_vit2", 32, image_size=32),
                                         models.load_teacher(tiny_teacher, None)), tmp / "other.pt")
    (tmp / "a_file").write_text("x")
    return SimpleNamespace(tmp=tmp, synth=synth, done=tmp / "done", files={
        p.name: p.read_bytes() for p in (tmp / "done").iterdir()})


BAD_INPUTS = {  # name -> (data, out, extra flags with {tmp} placeholders, what the one error line says)
    "no such folder": ("nope", "x", [], "does not exist"),
    "folder without images": ("empty", "x", [], "holds no images"),
    "contrastive without labels": ("plain", "x", ["--loss", "contrastive"], "needs class labels"),
    "--init of another student": ("synth", "x", ["--init", "{tmp}/other.pt"], "holds a test_vit2 student"),
    "--init of another size": ("synth", "x", ["--init", "{tmp}/done/student.pt", "--image-size", "64"],
                               "does not fit"),
    "--resume with nothing to resume": ("synth", "x", ["--resume"], "nothing to resume"),
    "--resume with another --lr": ("synth", "done", ["--resume", "--lr", "1e-3"], "--lr 0.0005 (now 0.001)"),
    "--out holds a run": ("synth", "done", [], "already holds a run"),
    "batch larger than the data": ("synth", "x", ["--batch-size", "64"], "larger than the 24"),
    "--out is a file": ("synth", "a_file", [], "is a file, not a folder"),
    "--out below a file": ("synth", "a_file/run", [], "is a file, not a folder"),
    "--eval-root without the test split": ("synth", "x", ["--dataset", "pets", "--eval-root", "{tmp}/empty"],
                                           "fetch it first with python zeroshot.py --dataset pets --download"),
    "--cache-dir below a file": ("synth", "x", ["--cache-dir", "{tmp}/a_file/cache"], "--cache-dir"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input(case, finished, tiny_teacher, capsys):
    data, out, extra, expect = BAD_INPUTS[case]
    tmp = finished.tmp
    fails(run_args(tmp / data, tiny_teacher, tmp / out, *[x.format(tmp=tmp) for x in extra]), capsys, expect)
    assert not (tmp / "x").exists()
    assert {p.name: p.read_bytes() for p in finished.done.iterdir()} == finished.files  # nothing good overwritten


def test_zeroshot_evaluates_last_pt_like_student_pt(finished):
    """last.pt (a run's resume state) can be evaluated mid-run: at the end it holds student.pt's weights."""
    final, last = (zeroshot.evaluate(str(finished.done / name), str(finished.synth), workers=0, progress=False)
                   for name in ("student.pt", "last.pt"))
    for key in ("acc1", "mean_per_class_recall"):  # (acc5 is NaN with 3 classes)
        assert last["metrics"][key] == final["metrics"][key]
    assert last["model_info"]["step"] == 3 and last["model_info"]["arch"] == "test_vit"
    (a, final_ckpt), (b, last_ckpt) = (models.load_student(finished.done / n) for n in ("student.pt", "last.pt"))
    assert_same(a.state_dict(), b.state_dict())
    assert {k: last_ckpt[k] for k in ("image_size", "mean", "std", "teacher")} == \
        {k: final_ckpt[k] for k in ("image_size", "mean", "std", "teacher")}


def test_out_on_a_read_only_file_system(tiny_teacher, synth, tmp_path, monkeypatch, capsys):
    (tmp_path / "ro").mkdir()  # a mount point
    kit.simulate_read_only(monkeypatch, tmp_path / "ro")
    fails(run_args(synth, tiny_teacher, tmp_path / "ro" / "run"), capsys, "not a writable folder")
    assert not (tmp_path / "ro" / "run").exists()


def test_read_only_data_folder_trains_with_cache_dir(tiny_teacher, synth, tmp_path, monkeypatch, capsys):
    distill.main(run_args(synth, tiny_teacher, tmp_path / "a", steps=2))  # the default: <data>/cache
    shutil.rmtree(synth / "cache")
    kit.simulate_read_only(monkeypatch, synth)
    fails(run_args(synth, tiny_teacher, tmp_path / "b", steps=2), capsys, "with --cache-dir DIR")
    assert not (tmp_path / "b").exists()
    distill.main(run_args(synth, tiny_teacher, tmp_path / "b", "--cache-dir", str(tmp_path / "cache"), steps=2))
    assert not (synth / "cache").exists() and len(list((tmp_path / "cache").glob("synth-*/*.pt"))) == 1
    assert_same(weights(tmp_path / "a" / "student.pt"), weights(tmp_path / "b" / "student.pt"))  # same run


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_teacher, synth, tmp_path, monkeypatch, capsys):
    out, calls = tmp_path / "run", []
    l2 = distill.LOSSES["l2"]

    def nan_at_5(*a):
        calls.append(1)
        return l2(*a) * (float("nan") if len(calls) == 5 else 1.0)
    monkeypatch.setitem(distill.LOSSES, "l2", nan_at_5)
    fails(run_args(synth, tiny_teacher, out, steps=10), capsys, "loss is nan at step 5")
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["step"] == 3 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (out / "student.pt").exists()


def test_compile_wraps_the_ddp_model_and_checkpoints_stay_plain(tiny_teacher, synth, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kw):  # torch.compile's real machinery (dynamo), without a C++ compiler
        compiled.append(model)
        return real_compile(model, backend="eager", **kw)
    monkeypatch.setattr(torch, "compile", eager_compile)
    distill.main(run_args(synth, tiny_teacher, tmp_path / "c", "--compile", steps=2))
    assert len(compiled) == 1 and isinstance(compiled[0], models.Student)
    keys = weights(tmp_path / "c" / "last.pt").keys()
    assert keys == weights(tmp_path / "c" / "student.pt").keys() and not any("_orig_mod" in k for k in keys)


def test_channels_last_trains_like_the_default_and_saves_plain_weights(tiny_teacher, synth, tmp_path):
    # a CNN student (test_vit has no convolutions to gain from NHWC), the same 4 steps with and without the flag
    for name, extra in (("plain", []), ("nhwc", ["--channels-last"])):
        distill.main(run_args(synth, tiny_teacher, tmp_path / name, "--student", "test_resnet", *extra, steps=4))
    plain, nhwc = ([r["loss"] for r in log_steps(tmp_path / n)] for n in ("plain", "nhwc"))
    assert len(nhwc) == 4 and nhwc == pytest.approx(plain, rel=1e-4)  # other kernels, the same math
    convs = [v for v in weights(tmp_path / "nhwc" / "last.pt").values() if v.dim() == 4]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous()
                         for v in convs if v.shape[1] > 1 and v.shape[2:] != (1, 1))  # trained in NHWC
    assert all(v.is_contiguous() for v in weights(tmp_path / "nhwc" / "student.pt").values())  # saved plain
    assert (tmp_path / "nhwc" / "open_clip" / "open_clip_config.json").is_file()


# ----------------------------------------------------------------------------------------------
# faults: undecodable images, a run killed before its first checkpoint

def test_undecodable_images_are_skipped_named_and_recorded(tiny_teacher, tmp_path, capsys):
    synth = kit.make_synth_folder(tmp_path / "synth", per_class=70)  # 210 images: 2 bad ones are < 1%
    truncated, empty = synth / "images" / "001" / "00003.png", synth / "images" / "002" / "00010.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty.write_bytes(b"")
    distill.main(run_args(synth, tiny_teacher, tmp_path / "a", "--batch-size", "16", steps=2))
    err = capsys.readouterr().err  # warnings go to stderr, as zeroshot.py's
    assert str(truncated) in err and str(empty) in err and "skipped 2 undecodable images" in err
    [cache] = (synth / "cache").glob("*.pt")
    cache = torch.load(cache, weights_only=True)
    assert sorted(p for p, _ in cache["skipped"]) == ["images/001/00003.png", "images/002/00010.png"]
    assert cache["emb"].shape[0] == 208 and "images/001/00003.png" not in cache["paths"]
    assert (tmp_path / "a" / "student.pt").is_file()
    # the check is paid once: a rerun reads its record instead of decoding every image again
    decoded = []
    real_open = views.Image.open
    views.Image.open = lambda *a, **k: decoded.append(1) or real_open(*a, **k)
    try:
        images = views.load_images(synth)
    finally:
        views.Image.open = real_open
    assert decoded == [] and len(images.paths) == 208 and len(images.skipped) == 2


def test_a_folder_with_many_undecodable_images_is_refused(tiny_teacher, synth, tmp_path, capsys):
    for name in ("00001.png", "00002.png"):
        (synth / "images" / "000" / name).write_bytes(b"not a png")
    fails(run_args(synth, tiny_teacher, tmp_path / "x"), capsys, "2 of 24 images in")
    assert not (tmp_path / "x").exists()


def test_a_last_pt_with_the_older_weights_key_still_loads(tiny_teacher, synth, tmp_path):
    run = tmp_path / "run"
    distill.main(run_args(synth, tiny_teacher, run, steps=3))
    last = torch.load(run / "last.pt", weights_only=False)
    trained = last["state_dict"]
    torch.save({"model" if k == "state_dict" else k: v for k, v in last.items()}, run / "last.pt")  # the older key
    distill.main(run_args(synth, tiny_teacher, run, "--resume", steps=4))
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["step"] == 4 and "model" not in resumed
    torch.save({"model" if k == "state_dict" else k: v for k, v in last.items()}, tmp_path / "old.pt")
    model = models.build_student("test_vit", 32, image_size=32)
    run_state.load_init(model, tmp_path / "old.pt")
    assert_same(model.state_dict(), trained)
    assert_same(models.load_student(tmp_path / "old.pt")[0].state_dict(), trained)  # zeroshot.py and export.py


def test_resume_of_a_run_killed_before_its_first_checkpoint(tiny_teacher, synth, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    distill.main(run_args(synth, tiny_teacher, tmp_path / "straight", steps=4))
    shutil.rmtree(synth / "cache")

    def killed_while_building(*a, **k):
        (synth / "cache" / ".tmp-of-a-killed-writer.pt.x.tmp").write_bytes(b"half a cache")
        raise KeyboardInterrupt
    monkeypatch.setattr(views, "build_cache", killed_while_building)
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        distill.main(run_args(synth, tiny_teacher, run, steps=4))
    assert sorted(p.name for p in run.iterdir()) == ["args.json"]
    monkeypatch.undo()
    distill.main(run_args(synth, tiny_teacher, run, "--resume", steps=4))  # the same command, --resume added
    assert not list((synth / "cache").glob(".*.tmp"))  # the killed writer's temp file is gone
    assert_same(weights(straight / "student.pt"), weights(run / "student.pt"))
    assert [r["step"] for r in log_steps(run)] == list(range(1, 5))


# ----------------------------------------------------------------------------------------------
# the end of a run: the open_clip export; the GPU precision path on a CPU

def test_run_exports_an_open_clip_model_that_evaluates_like_student_pt(tiny_teacher, synth, tmp_path, capsys):
    out = tmp_path / "run"
    distill.main(run_args(synth, tiny_teacher, out, "--student", "test_efficientnet", steps=2))
    assert (out / "open_clip" / "open_clip_config.json").is_file()
    a = zeroshot.evaluate(str(out / "student.pt"), str(synth), workers=0, progress=False)
    b = zeroshot.evaluate(f"local-dir:{out / 'open_clip'}", str(synth), workers=0, progress=False)
    same = ("acc1", "mean_per_class_recall")  # acc5 is NaN with 3 classes
    assert [a["metrics"][k] for k in same] == [b["metrics"][k] for k in same]
    assert b["model"] == "run" and b["model_info"]["kind"] == "student"
    assert (b["model_info"]["arch"], b["model_info"]["loss"]) == ("test_efficientnet", "l2")  # from the run's args
    # a ViT at a size open_clip cannot build: the run still ends well, with one warning line
    distill.main(run_args(synth, tiny_teacher, tmp_path / "vit", steps=1))
    assert "warning: no open_clip export" in capsys.readouterr().err
    assert (tmp_path / "vit" / "student.pt").is_file() and not (tmp_path / "vit" / "open_clip").exists()


def test_bf16_autocast_path_runs_on_cpu(tiny_teacher, synth, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZSD_CPU_BF16", "1")  # the autocast branch GPU runs take, here on the CPU
    distill.main(run_args(synth, tiny_teacher, tmp_path / "a", "--no-cache", steps=3))
    assert "bf16 autocast" in capsys.readouterr().out
    assert all(math.isfinite(r["loss"]) for r in log_steps(tmp_path / "a"))


# ----------------------------------------------------------------------------------------------
# --text caption: the contrastive baseline against each image's own prompt (the authors' run)

def test_text_targets_are_the_teachers_embeddings_of_the_captions_or_the_class_prompts(tiny_teacher, synth, tmp_path):
    lines = [json.loads(x) for x in (synth / "manifest.jsonl").read_text().splitlines()]
    for i, rec in enumerate(lines):  # every image its own prompt
        rec["prompt"] = f"a photo of a {rec['classname']}, number {i}, at dusk"
    (synth / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    images, teacher = views.load_images(synth), models.load_teacher(tiny_teacher, None)
    classes = (["circle", "square", "triangle"], ["a photo of a {c}."])
    cpu = torch.device("cpu")
    class_emb, text_emb, rows = distill.text_targets(images, teacher, *classes, distill.Args(loss="contrastive"), cpu)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(teacher.model.encode_text(
            teacher.tokenizer([rec["prompt"] for rec in lines])).float(), dim=-1)
    torch.testing.assert_close(text_emb, expected, rtol=0, atol=1e-5)  # (N, D): --text caption, the default
    assert rows.tolist() == list(range(24)) and class_emb.shape == (3, 32)
    _, text_emb, rows = distill.text_targets(images, teacher, *classes, distill.Args(loss="mix", text="class"), cpu)
    assert text_emb is class_emb and torch.equal(rows, images.labels)
    # the runs train on them: captions and class prompts give other students
    distill.main(run_args(synth, tiny_teacher, tmp_path / "a", "--loss", "contrastive", steps=2))
    assert json.loads((tmp_path / "a" / "args.json").read_text())["text"] == "caption"  # the default
    distill.main(run_args(synth, tiny_teacher, tmp_path / "b", "--loss", "contrastive", "--text", "class", steps=2))
    assert not torch.equal(weights(tmp_path / "a" / "student.pt")["proj.weight"],
                           weights(tmp_path / "b" / "student.pt")["proj.weight"])


def test_caption_text_needs_prompts(tiny_teacher, synth, tmp_path, capsys):
    lines = [json.loads(x) for x in (synth / "manifest.jsonl").read_text().splitlines()]
    (synth / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "prompt"}) + "\n"
                                                  for x in lines))
    fails(run_args(synth, tiny_teacher, tmp_path / "x", "--loss", "contrastive"), capsys, "pass --text class")
    distill.main(run_args(synth, tiny_teacher, tmp_path / "ok", "--loss", "l2", steps=1))  # L2 needs no text


@pytest.mark.parametrize("case", ["synth.json is a list", "synth.json is not UTF-8", "synth.json classnames",
                                  "manifest is not UTF-8", "manifest line is not JSON"])
def test_broken_folder_files_are_one_line(case, tiny_teacher, synth, tmp_path, capsys):
    broken, content, expect = {
        "synth.json is a list": ("synth.json", b"[1, 2]", "holds a JSON list, not a JSON object"),
        "synth.json is not UTF-8": ("synth.json", '{"per_class": "caf\xe9"}'.encode("latin-1"), "is not UTF-8"),
        "synth.json classnames": ("synth.json", b'{"per_class": 8, "classnames": 3}', "not a list of names"),
        "manifest is not UTF-8": ("manifest.jsonl", b'{"path": "\xff"}\n', "is not UTF-8"),
        "manifest line is not JSON": ("manifest.jsonl", b'{"path": "images/000/00000.png", "label": 0}\n{oops\n',
                                      "manifest.jsonl:2 is not valid JSON"),
    }[case]
    (synth / broken).write_bytes(content)
    fails(run_args(synth, tiny_teacher, tmp_path / "x"), capsys, expect)
    assert not (tmp_path / "x").exists()
    kit.exits_with_one_line(zeroshot.main, ["--model", tiny_teacher, "--dataset", str(synth), "--out",
                                            str(tmp_path / "r.json")], capsys, expect)
    assert not (tmp_path / "r.json").exists()
