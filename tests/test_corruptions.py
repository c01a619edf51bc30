"""zeroshot.py --corruption: every ImageNet-C corruption at every severity on a 224 px image, seeded per image,
applied after resize and crop and before normalisation, cached so a second model reads the corrupted images; bad
input is one line; bench.py table's robustness rows."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import bench_table, common, corruptions, models
import kit
import zeroshot


def test_every_corruption_at_every_severity_on_a_224px_image():
    rng = np.random.default_rng(0)
    image = np.clip(np.kron(rng.random((8, 8, 3)), np.ones((28, 28, 1))) * 200 + rng.normal(0, 10, (224, 224, 3)),
                    0, 255).astype(np.uint8)
    state = np.random.get_state()
    for name in corruptions.NAMES:
        for severity in corruptions.SEVERITIES:
            out = corruptions.corrupt(image, name, severity, seed=7)
            assert out.shape == image.shape and out.dtype == np.uint8, (name, severity)
            assert not np.array_equal(out, image), (name, severity)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state)), "callers' stream untouched"
    # seeded: the same seed gives the same pixels, another seed others (the noises and glass blur draw randomly)
    for name in ("gaussian_noise", "impulse_noise", "glass_blur"):
        assert np.array_equal(corruptions.corrupt(image, name, 3, 7), corruptions.corrupt(image, name, 3, 7))
        assert not np.array_equal(corruptions.corrupt(image, name, 3, 7), corruptions.corrupt(image, name, 3, 8))


def test_selection():
    assert corruptions.selection("gaussian_noise", "3") == [("gaussian_noise", 3)]
    assert len(corruptions.selection("all", "all")) == 75
    assert corruptions.selection("fog,contrast", "1,5") == [("fog", 1), ("fog", 5), ("contrast", 1), ("contrast", 5)]


def run(model, root, out, *extra):
    return zeroshot.main(["--model", model, "--dataset", "pets", "--data-root", str(root), "--workers", "0",
                          "--corruption", "gaussian_noise", "--severity", "3", "--out", str(out), *extra])


def test_corrupted_once_rerun_identical_second_model_reads_the_cache(tiny_teacher, fake_root, tmp_path, capsys):
    root, _ = fake_root
    t0 = time.perf_counter()
    first = run(tiny_teacher, root, tmp_path / "a.json")
    t_first = time.perf_counter() - t0
    log = capsys.readouterr().out
    assert "corruption cache: built" in log and "pets | gaussian_noise 3 | tiny_teacher0 | n 37" in log
    saved = json.loads((tmp_path / "a.json").read_text())
    assert (saved["corruption"], saved["severity"], saved["corruption_seed"]) == ("gaussian_noise", 3, 0)
    cache = saved["corruption_cache"]["path"]
    pixels = np.fromfile(cache, dtype=np.uint8)
    # the cached pixels are ImageNet-C's: the model's resize and centre crop, to uint8, then the corruption
    teacher = models.load_teacher(tiny_teacher, None)
    geometry, _ = corruptions.split_transform(teacher.preprocess)
    import torchvision
    ds = torchvision.datasets.OxfordIIITPet(str(root), split="test")
    crop = np.asarray(geometry(ds[5][0].convert("RGB")))
    assert crop.shape == (64, 64, 3)
    expected = corruptions.corrupt(crop, "gaussian_noise", 3, corruptions.image_seed(0, 5))
    assert np.array_equal(pixels.reshape(37, 64, 64, 3)[5], expected)
    # a rerun that corrupts again from scratch gives the same pixels and the same metrics
    for f in (Path(cache), Path(cache).with_suffix(".json")):
        f.unlink()
    again = run(tiny_teacher, root, tmp_path / "b.json")
    assert "corruption cache: built" in capsys.readouterr().out
    assert again["metrics"] == first["metrics"] and np.array_equal(np.fromfile(cache, dtype=np.uint8), pixels)
    # a second model with the same input size reads the cached images and pays only its forward passes
    student = models.build_student("test_vit", teacher.embed_dim, image_size=64)
    ckpt = models.student_checkpoint(student, teacher, classnames=None, templates=None, dataset="pets")
    path = tmp_path / "run" / "student.pt"
    common.save_torch(ckpt, path)
    t0 = time.perf_counter()
    other = run(str(path), root, tmp_path / "c.json")
    t_second = time.perf_counter() - t0
    assert f"corruption cache: read {cache}" in capsys.readouterr().out and other["corruption_cache"]["read"]
    print(f"first model {t_first:.2f}s, second model {t_second:.2f}s", file=sys.stderr)  # measured, not asserted


@pytest.mark.parametrize("argv, expect", [
    (["--corruption", "fogg"], "unknown corruption 'fogg'"),
    (["--corruption", "fog", "--severity", "0"], "--severity 0: use 1, 2, 3, 4, 5 or all"),
    (["--corruption", "fog", "--severity", "6"], "--severity 6: use 1, 2, 3, 4, 5 or all"),
    (["--severity", "3"], "--severity needs --corruption"),
    (["--corruption", "all", "--out", "/tmp/x.json"], "--out names one file"),
])
def test_bad_corruption_input_is_one_line(argv, expect, tiny_teacher, capsys):
    kit.exits_with_one_line(zeroshot.main, ["--model", tiny_teacher, *argv], capsys, expect)


def test_missing_package_is_one_line(tiny_teacher, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # import imagecorruptions -> ImportError
    kit.exits_with_one_line(zeroshot.main, ["--model", tiny_teacher, "--corruption", "fog"], capsys,
                            "pip install imagecorruptions-imaug")


def test_robustness_table(tmp_path):
    def result(model, kind, acc1, corruption=None, severity=None):
        r = {"dataset": "pets", "model": model, "templates": "paper", "n": 10, "source": "real",
             "metrics": {"acc1": acc1, "acc5": acc1, "mean_per_class_recall": acc1},
             "model_info": {"kind": kind, "arch": "a", "loss": "l2" if kind == "student" else None}}
        if corruption:
            r.update(corruption=corruption, severity=severity)
        name = f"{model}_{corruption}_{severity}.json"
        (tmp_path / name).write_text(json.dumps(r))
    result("teacher", "teacher", 0.8)
    result("teacher", "teacher", 0.6, "fog", 1)
    result("teacher", "teacher", 0.4, "fog", 5)
    result("st", "student", 0.5)
    result("st", "student", 0.45, "fog", 1)
    result("st", "student", 0.35, "fog", 5)
    text, record = bench_table.table([str(tmp_path)])
    rows = record["robustness"]
    assert [r["teacher"] for r in rows] == [True, False], "the teacher is the first, reference, row"
    assert rows[0]["clean"] == pytest.approx(80) and rows[0]["corrupted"] == pytest.approx(50)
    assert rows[0]["relative"] == pytest.approx(50 / 80) and rows[1]["relative"] == pytest.approx(40 / 50)
    assert "| teacher, paper templates | pets | 2 | 80.00 | 50.00 | 0.625 | (reference) |" in text
    assert "| 2 | 50.00 | 40.00 | 0.800 | +0.175 |" in text
    # corrupted results stay out of the headline: the student's pets cell is its clean top-1
    assert record["rows"][next(k for k in record["rows"] if k.startswith("st "))]["real"]["pets"]["top1"] == 50
