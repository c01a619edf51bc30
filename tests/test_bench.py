"""bench.py: the headline table from result JSONs with known numbers, the plot, and the timing code at
tiny sizes (no timing is asserted)."""
import json
from types import SimpleNamespace

import pytest
import torch

import bench
import common


def _result(path, model, dataset, acc1, mpcr, source="real", kind="student", loss="l2", params=5e6):
    info = {"kind": kind, "arch": "tiny_vit_5m_224" if kind == "student" else "ViT-B-32", "image_params": params,
            "loss": loss if kind == "student" else None}
    common.save_json({"dataset": dataset, "model": model, "templates": "paper", "n": 100, "source": source,
                      "metrics": {"acc1": acc1, "acc5": 1.0, "mean_per_class_recall": mpcr}, "model_info": info},
                     path)


def test_table_cells_differences_and_plot(tmp_path, capsys):
    res = tmp_path / "results"
    _result(res / "a.json", "pets_l2", "pets", acc1=0.80, mpcr=0.85)          # pets: paper metric = mpcr
    _result(res / "b.json", "pets_l2", "cars", acc1=0.70, mpcr=0.60)          # cars: paper metric = top-1
    _result(res / "c.json", "pets_l2", "pets", acc1=0.95, mpcr=0.95, source="synthetic")
    _result(res / "d.json", "ViT-B-32_x", "dtd", acc1=0.5, mpcr=0.4, kind="teacher", params=87.85e6)
    (res / "junk.json").write_text("{not json")
    plot = tmp_path / "plot.png"
    bench.main(["table", str(res), "--plot", str(plot)])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| pets_l2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # columns: model, params, pets, cars, flowers, food101, fgvc_aircraft, dtd, gap
    assert cells[1] == "5.00M"
    assert cells[2] == "85.00 (-2.50) [top-1 80.0, mpcr 85.0]"   # 85.00 - 87.5 (paper's L2 student, Pets)
    assert cells[3] == "70.00 (-11.90) [top-1 70.0, mpcr 60.0]"  # 70.00 - 81.9 (Cars)
    assert cells[4] == "" and cells[8] == "pets 95.0 (+15.0)"     # synthetic 95 - real top-1 80
    teacher = next(line for line in out.splitlines() if line.startswith("| ViT-B-32_x"))
    assert "50.00 (-7.13)" in teacher                              # DTD top-1 50 - 57.13 (teacher row)
    assert "| paper: student contrastive |" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(out.strip().splitlines()[-1])
    assert record["command"] == "table"


def test_table_without_results_fails(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["table", str(tmp_path)])
    assert e.value.code == 2 and "no zeroshot result JSON" in capsys.readouterr().err


def test_models_timing_runs_tiny(tiny_teacher, capsys):
    record = bench.main(["models", "--teacher", tiny_teacher, "--students", "test_vit", "--image-size", "64",
                         "--batch-size", "2", "--warmup", "0", "--runs", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "| test_vit |" in out and "img/s (batch 2)" in out
    student = next(r for r in record if r["model"] == "test_vit")
    assert student["params"] > 0 and student["gflops"] > 0 and student["images_per_s"] > 0
    teacher = next(r for r in record if r["model"].startswith("teacher"))
    assert student["fewer_params_pct"] == pytest.approx(100 * (1 - student["params"] / teacher["params"]))
    assert teacher["speedup"] == 1.0


def test_synth_timing_runs_tiny(capsys):
    record = bench.main(["synth", "--quick", "--warmup", "0", "--runs", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "| bare pipeline loop | 74 |" in out and "synth.py (prompts, saving, manifest)" in out
    assert record["bare_images_per_s"] > 0 and record["synth_images_per_s"] > 0


def test_train_timing_runs_tiny(tiny_teacher):
    args = SimpleNamespace(teacher=tiny_teacher, students=["test_vit"], student=[], batch_size=4, warmup=0, runs=1,
                           workers=0)
    table, record = bench.bench_train(args, torch.device("cpu"))
    assert "| cached (default) |" in table and "| --no-cache (teacher online) |" in table
    assert record["student"] == "test_vit" and record["image_size"] == 64 and record["loader_img_per_s"] > 0
    assert set(record["img_per_s"]) == {"student only (no teacher)", "cached (default)", "--no-cache (teacher online)"}
