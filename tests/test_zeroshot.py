"""zeroshot.py: metrics by hand, classifier parity (open_clip, CLIP_benchmark), every dataset and model
kind end to end on the offline kit, and one-line errors for bad input."""
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import common, models, domains, eval_data
import kit
import zeroshot


# ----------------------------------------------------------------------------------------------
# metrics, by hand

def test_metrics_hand_computed():
    # 4 images, 3 classes. Predictions (argmax): 0, 2, 2, 1; labels: 0, 1, 2, 2.
    logits = torch.tensor([[3.0, 1.0, 0.0],
                           [0.0, 1.0, 2.0],
                           [0.0, 1.0, 5.0],
                           [1.0, 4.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 2])
    m = zeroshot.compute_metrics(logits, labels)
    assert m["acc1"] == 2 / 4                       # images 0 and 2 right
    # recall: class 0: 1/1, class 1: 0/1, class 2: 1/2 -> mean 0.5
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert np.isnan(m["acc5"])                      # fewer than 5 classes, as CLIP_benchmark


def test_metrics_top5_and_absent_classes_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g)
    labels = torch.randint(0, 7, (50,), generator=g)  # classes 7..9 absent from labels but predicted
    m = zeroshot.compute_metrics(logits, labels)
    top5 = logits.topk(5, dim=1).indices
    assert m["acc5"] == sum(int(labels[i] in top5[i]) for i in range(50)) / 50
    with pytest.warns(UserWarning):  # sklearn warns about predicted classes absent from y_true
        ref = balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert m["mean_per_class_recall"] == ref  # exactly, not approximately


# ----------------------------------------------------------------------------------------------
# the text classifier

def test_classifier_hand_computed_and_cached(tiny_teacher, monkeypatch):
    teacher = models.load_teacher(tiny_teacher, None)
    names, templates = ["cat", "dog"], ["a photo of a {c}.", "a {c}."]
    clf = zeroshot.build_classifier(teacher, names, templates)
    assert clf.shape == (2, teacher.embed_dim)
    with torch.no_grad():
        e = F.normalize(teacher.model.encode_text(teacher.tokenizer(["a photo of a dog.", "a dog."])), dim=-1)
    expected = (e[0] + e[1]) / (e[0] + e[1]).norm()  # normalise each, average, normalise
    torch.testing.assert_close(clf[1], expected, atol=1e-6, rtol=1e-5)
    # cached: neither the in-process cache nor a fresh process (disk) encodes the prompts again
    def encode_text(*a, **k):
        raise RuntimeError("prompts encoded again")
    monkeypatch.setattr(teacher.model, "encode_text", encode_text)
    zeroshot._CLASSIFIERS.clear()
    again = zeroshot.build_classifier(teacher, names, templates)
    assert torch.equal(again, clf)
    with pytest.raises(RuntimeError, match="encoded again"):  # a different template set is not a cache hit
        zeroshot.build_classifier(teacher, names, templates[:1])


def test_classifier_matches_open_clip(tiny_teacher):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    teacher = models.load_teacher(tiny_teacher, None)
    names, templates = domains.CLASSNAMES["dtd"], domains.CLIP_BENCHMARK_TEMPLATES["dtd"]
    ours = zeroshot.build_classifier(teacher, names, templates, batch_size=64)
    positional = [t.replace("{c}", "{}") for t in templates]  # open_clip formats templates positionally
    ref = build_zero_shot_classifier(teacher.model, teacher.tokenizer, names, positional, device="cpu",
                                     use_tqdm=False)  # (D, C)
    torch.testing.assert_close(ours, ref.t(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# parity with CLIP_benchmark on the same model and images, both template sets

@pytest.mark.parametrize("dataset", domains.DATASETS)
def test_parity_with_clip_benchmark(dataset, tiny_teacher, fake_root, tmp_path):
    cb = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    from clip_benchmark.datasets.builder import build_dataset
    from sklearn.metrics import balanced_accuracy_score
    root, _ = fake_root
    teacher = models.load_teacher(tiny_teacher, None)
    for templates in ("paper", "clip_benchmark"):
        ds = build_dataset(dataset, root=str(root), transform=teacher.preprocess, split="test", download=False)
        tmpl = zeroshot.TEMPLATE_SETS[templates][dataset]
        if templates == "clip_benchmark":
            assert list(ds.templates) == list(tmpl)  # CLIP_benchmark's own template set
        assert list(ds.classes) == domains.CLASSNAMES[dataset]  # CLIP_benchmark's own class names
        loader = torch.utils.data.DataLoader(ds, batch_size=8)
        ref_clf = cb.zero_shot_classifier(teacher.model, teacher.tokenizer, ds.classes, tmpl, "cpu", amp=False)
        logits, target = cb.run_classification(teacher.model, ref_clf, loader, "cpu", amp=False)
        pred = logits.argmax(1)
        ref = {"acc1": (pred == target).sum().item() / len(target),
               "acc5": logits.topk(5, 1).indices.eq(target[:, None]).sum().item() / len(target),
               "mean_per_class_recall": balanced_accuracy_score(target.numpy(), pred.numpy())}
        out = tmp_path / f"{templates}.json"
        zeroshot.main(["--model", tiny_teacher, "--dataset", dataset, "--data-root", str(root), "--templates",
                       templates, "--batch-size", "16", "--workers", "0", "--device", "cpu", "--out", str(out)])
        got = json.loads(out.read_text())
        assert got["n"] == len(ds)
        assert got["metrics"] == ref, (dataset, templates)


# ----------------------------------------------------------------------------------------------
# models and datasets end to end

def _student_ckpt(tmp_path, teacher, dataset="pets", with_text=True):
    student = models.build_student("test_vit", teacher.embed_dim, image_size=32)
    names = domains.CLASSNAMES[dataset]
    templates = domains.PAPER_TEMPLATES[dataset]
    emb = zeroshot.build_classifier(teacher, names, templates) if with_text else None
    ckpt = models.student_checkpoint(student, teacher, classnames=names, templates=templates, dataset=dataset,
                                     class_text_emb=emb)
    path = tmp_path / "run" / "student.pt"
    common.save_torch(ckpt, path)
    return path


def test_student_uses_its_own_text_embeddings(tiny_teacher, fake_root, tmp_path, monkeypatch, capsys):
    root, _ = fake_root
    teacher = models.load_teacher(tiny_teacher, None)
    path = _student_ckpt(tmp_path, teacher)

    def no_teacher(*a, **k):
        raise AssertionError("the teacher must not be loaded for the student's own classes")
    monkeypatch.setattr(models, "load_teacher", no_teacher)
    out = tmp_path / "r.json"
    res = zeroshot.main(["--model", str(path), "--dataset", "pets", "--data-root", str(root), "--workers", "0",
                         "--out", str(out)])
    assert res["model"] == "run" and res["n"] == 37
    assert "pets | run | n 37 | acc1" in capsys.readouterr().out
    assert json.loads(out.read_text())["metrics"]["acc1"] == res["metrics"]["acc1"]


def test_student_on_another_dataset_uses_teacher_text(tiny_teacher, fake_root, tmp_path):
    root, _ = fake_root
    teacher = models.load_teacher(tiny_teacher, None)
    path = _student_ckpt(tmp_path, teacher)
    zs = zeroshot.load_model(str(path))
    res = zeroshot.evaluate(zs, "dtd", data_root=str(root), workers=0, progress=False)
    assert res["num_classes"] == 47 and zs.teacher is not None and zs.teacher.name == teacher.name
    # the classifier it used is the teacher's, for DTD's classes
    torch.testing.assert_close(zs.classifier(domains.CLASSNAMES["dtd"], domains.PAPER_TEMPLATES["dtd"], "cpu"),
                               zeroshot.build_classifier(teacher, domains.CLASSNAMES["dtd"],
                                                         domains.PAPER_TEMPLATES["dtd"]))


def test_student_logits_match_manual(tiny_teacher, tmp_path):
    """The whole path (transform, encoder, classifier, metrics) equals a hand-written loop."""
    teacher = models.load_teacher(tiny_teacher, None)
    folder = kit.make_image_folder(tmp_path / "imgs", classnames=("red_fox", "cat", "dog", "owl", "bee", "ant"),
                                   per_class=2)
    path = _student_ckpt(tmp_path, teacher)
    zs = zeroshot.load_model(str(path))
    res = zeroshot.evaluate(zs, str(folder), workers=0, progress=False)
    names, templates = zeroshot.resolve_classes(str(folder))
    assert names == ["ant", "bee", "cat", "dog", "owl", "red fox"] and templates == zeroshot.GENERIC_TEMPLATES
    clf = zeroshot.build_classifier(teacher, names, templates)
    from PIL import Image
    feats, labels = [], []
    for y, c in enumerate(["ant", "bee", "cat", "dog", "owl", "red_fox"]):
        for p in sorted((folder / c).iterdir()):
            feats.append(zs.encoder(zs.transform(Image.open(p).convert("RGB"))[None]))
            labels.append(y)
    logits = 100 * F.normalize(torch.cat(feats), dim=-1) @ clf.t()
    assert res["metrics"] == zeroshot.compute_metrics(logits.detach(), torch.tensor(labels))


def test_synth_folder_and_subset(tiny_teacher, tmp_path):
    folder = kit.make_synth_folder(tmp_path / "synth" / "pets", dataset="pets", per_class=1)
    names, templates = zeroshot.resolve_classes(str(folder), "clip_benchmark")
    assert names == domains.CLASSNAMES["pets"] and templates == domains.CLIP_BENCHMARK_TEMPLATES["pets"]
    res = zeroshot.evaluate(tiny_teacher, str(folder), workers=0, progress=False)
    assert res["n"] == 37 and res["dataset"] == "pets"
    sub = ["images/000/00000.png", "images/005/00000.png"]
    assert zeroshot.evaluate(tiny_teacher, str(folder), workers=0, subset=sub, progress=False)["n"] == 2


def test_corrupt_image_is_skipped_and_named(tiny_teacher, tmp_path, capsys):
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=3)
    bad = folder / "square" / "001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    out = tmp_path / "r.json"
    zeroshot.main(["--model", tiny_teacher, "--dataset", str(folder), "--workers", "2", "--batch-size", "4",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert str(bad) in err and "skipped 1 of 9 images" in err
    assert json.loads(out.read_text())["n"] == 8 and json.loads(out.read_text())["skipped"] == 1


# ----------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2, nothing written

def _fails(argv, capsys, tmp_path, expect):
    out = tmp_path / "never.json"
    t0 = time.time()
    line = kit.exits_with_one_line(zeroshot.main, argv + ["--out", str(out), "--workers", "0"], capsys, expect)
    assert not out.exists()
    assert time.time() - t0 < 15  # fails fast, no hub retries
    return line


def _bad_input_folders(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "file.jpg").write_bytes(b"x")
    broken = kit.make_image_folder(tmp_path / "allbad", per_class=1)
    for p in broken.rglob("*.jpg"):
        p.write_bytes(b"garbage")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")


BAD_INPUTS = {  # name -> (argv with {teacher}, {root}, {tmp} placeholders, what the one error line says)
    "unknown dataset": (["--model", "{teacher}", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    "missing data root": (["--model", "{teacher}", "--dataset", "pets", "--data-root", "{tmp}/nope"],
                          "does not exist"),
    "dataset not downloaded": (["--model", "{teacher}", "--dataset", "pets", "--data-root", "{tmp}/empty"],
                               "--download"),
    "cars cannot be downloaded": (["--model", "{teacher}", "--dataset", "cars", "--data-root", "{tmp}/empty"],
                                  "Kaggle"),
    "folder without images": (["--model", "{teacher}", "--dataset", "{tmp}/empty"], "holds no images"),
    "dataset is a file": (["--model", "{teacher}", "--dataset", "{tmp}/file.jpg"], "is a file"),
    "no image decodes": (["--model", "{teacher}", "--dataset", "{tmp}/allbad"], "no readable image"),
    "not a student checkpoint": (["--model", "{tmp}/other.pt", "--dataset", "pets", "--data-root", "{root}"],
                                 "not a student checkpoint"),
    "unknown open_clip model": (["--model", "ViT-Q-99", "--dataset", "pets", "--data-root", "{root}"],
                                "unknown open_clip model"),
    "unknown pretrained tag": (["--model", "ViT-B-32", "--pretrained", "nosuchtag", "--dataset", "pets"],
                               "unknown pretrained tag"),
    "weights not cached offline": (["--model", "ViT-B-32", "--dataset", "pets", "--data-root", "{root}"],
                                   "not in the local cache"),
    "missing local-dir": (["--model", "local-dir:{tmp}/nodir", "--dataset", "pets"], "does not exist"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input(case, tiny_teacher, fake_root, tmp_path, capsys):
    _bad_input_folders(tmp_path)
    argv, expect = BAD_INPUTS[case]
    argv = [a.format(teacher=tiny_teacher, root=fake_root[0], tmp=tmp_path) for a in argv]
    _fails(argv, capsys, tmp_path, expect)


def test_existing_result_needs_overwrite(tiny_teacher, fake_root, tmp_path, capsys):
    root, _ = fake_root
    out = tmp_path / "r.json"
    out.write_text("{}")
    with pytest.raises(SystemExit) as e:
        zeroshot.main(["--model", tiny_teacher, "--dataset", "dtd", "--data-root", str(root), "--out", str(out)])
    assert e.value.code == 2 and out.read_text() == "{}"
    zeroshot.main(["--model", tiny_teacher, "--dataset", "dtd", "--data-root", str(root), "--out", str(out),
                   "--overwrite", "--workers", "0", "--limit", "5"])
    assert json.loads(out.read_text())["n"] == 5


# ----------------------------------------------------------------------------------------------
# precision: logits in fp32 even when the image tower runs under bf16 autocast

class _StoredEmbeddings(torch.nn.Module):
    """An image tower that returns a stored fp32 embedding per image (its first pixel is its index) and records
    whether it ran under bf16 autocast. No arithmetic, so only the classifier's precision is under test."""

    def __init__(self, emb):
        super().__init__()
        self.register_buffer("emb", emb)
        self.saw_bf16 = False

    def encode_image(self, images):  # (B, 3, H, W) -> (B, D)
        self.saw_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return self.emb[images[:, 0, 0, 0].long()]


def test_near_tied_logits_are_fp32_under_bf16_autocast(monkeypatch):
    # two classes along axes 0 and 1; image 0 (label 1) sits at cosines 0.3000 / 0.3005, image 1 (label 0) mirrored.
    # fp32 logits: 30.00 vs 30.05. In bf16 both cosines round to 0.30078125 and the logits tie: argmax picks class 0.
    z = (1 - 0.3 ** 2 - 0.3005 ** 2) ** 0.5
    tower = _StoredEmbeddings(torch.tensor([[0.3, 0.3005, z], [0.3005, 0.3, z]]))
    classifier = torch.eye(3)[:2]  # (C=2, D=3)
    images = torch.arange(2.0)[:, None, None, None].expand(2, 3, 1, 1)
    loader = [(images, torch.tensor([1, 0]), [])]
    fp32, labels, _ = zeroshot.predict(tower, loader, classifier, torch.device("cpu"), progress=False)
    assert not tower.saw_bf16
    torch.testing.assert_close(fp32, torch.tensor([[30.0, 30.05], [30.05, 30.0]]), atol=1e-4, rtol=0)
    monkeypatch.setenv("ZSD_CPU_BF16", "1")
    bf16, _, _ = zeroshot.predict(tower, loader, classifier, torch.device("cpu"), progress=False)
    assert tower.saw_bf16 and bf16.dtype == torch.float32
    assert torch.equal(bf16, fp32)
    m = zeroshot.compute_metrics(bf16, labels)
    assert (m["acc1"], m["mean_per_class_recall"]) == (1.0, 1.0)  # bf16 logits would give 0.5 and 0.5


def test_tiny_teacher_under_cpu_bf16_autocast(tiny_teacher, monkeypatch, tmp_path):
    """The real image tower runs under CPU bf16 autocast; its logits stay fp32 and near the fp32 ones."""
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=2)
    zs = zeroshot.load_model(tiny_teacher)
    clf = zs.classifier(*zeroshot.resolve_classes(str(folder)), "cpu")
    ds = eval_data.SkipBroken(eval_data.build_dataset(str(folder), None, "test", zs.transform))
    loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=eval_data.collate_skipping)
    fp32, _, _ = zeroshot.predict(zs.encoder, loader, clf, torch.device("cpu"), progress=False)
    monkeypatch.setenv("ZSD_CPU_BF16", "1")
    bf16, _, _ = zeroshot.predict(zs.encoder, loader, clf, torch.device("cpu"), progress=False)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # the tower did run in bf16
    torch.testing.assert_close(bf16, fp32, atol=1.0, rtol=0)  # 100 * cosine: bf16 moves it by well under 1


# ----------------------------------------------------------------------------------------------
# file-system faults: one line, exit 2, nothing written first; an unwritable cache only warns

def _text_cache_files():
    return [p for p in (common.cache_root() / "text").rglob("*") if p.is_file()] \
        if (common.cache_root() / "text").is_dir() else []


def _run(tiny_teacher, folder, out, *extra):
    return ["--model", tiny_teacher, "--dataset", str(folder), "--workers", "0", "--out", str(out), *extra]


def test_out_on_read_only_fs_fails_before_any_work(tiny_teacher, tmp_path, monkeypatch, capsys):
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=1)
    (tmp_path / "ro").mkdir()
    kit.simulate_read_only(monkeypatch, tmp_path / "ro")
    out = tmp_path / "ro" / "results" / "r.json"
    kit.exits_with_one_line(zeroshot.main, _run(tiny_teacher, folder, out), capsys, "not a writable folder")
    assert not out.exists() and _text_cache_files() == []  # failed before the text cache was built


def test_out_on_real_read_only_mount(tiny_teacher, ro_mount, tmp_path, capsys):
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=1)
    kit.exits_with_one_line(zeroshot.main, _run(tiny_teacher, folder, ro_mount / "r.json"), capsys,
                            "Read-only file system")
    assert _text_cache_files() == []


def test_out_is_a_folder(tiny_teacher, tmp_path, capsys):
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=1)
    kit.exits_with_one_line(zeroshot.main, _run(tiny_teacher, folder, tmp_path, "--overwrite"), capsys,
                            "is a folder")
    assert _text_cache_files() == []


def test_out_under_a_file(tiny_teacher, tmp_path, capsys):
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=1)
    (tmp_path / "notes.txt").write_text("x")
    kit.exits_with_one_line(zeroshot.main, _run(tiny_teacher, folder, tmp_path / "notes.txt" / "r.json"), capsys,
                            "is a file")
    assert _text_cache_files() == []


def _warns_once_and_finishes(tiny_teacher, tmp_path, capsys):
    folder = kit.make_image_folder(tmp_path / "imgs", per_class=1)
    out = tmp_path / "r.json"
    zeroshot.main(_run(tiny_teacher, folder, out))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cannot write the cache file" in warnings[0], warnings
    assert json.loads(out.read_text())["n"] == 3


def test_cache_home_is_a_file_warns(tiny_teacher, tmp_path, monkeypatch, capsys):
    (tmp_path / "cache_file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache_file"))
    _warns_once_and_finishes(tiny_teacher, tmp_path, capsys)


def test_cache_home_read_only_warns(tiny_teacher, tmp_path, monkeypatch, capsys):
    kit.simulate_read_only(monkeypatch, common.cache_root().parent)
    _warns_once_and_finishes(tiny_teacher, tmp_path, capsys)


def test_cache_home_on_real_read_only_mount_warns(tiny_teacher, ro_mount, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro_mount))
    _warns_once_and_finishes(tiny_teacher, tmp_path, capsys)
