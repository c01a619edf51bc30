"""bench.py: the headline table from result JSONs with known numbers (each cell against a hand computation), bad
result files, the GPU check at tiny sizes on the CPU, and the timing code at tiny sizes (no timing is asserted)."""
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import bench
from helpers import bench_gpu, common
from helpers.bench_timing import ROOT
import kit


def _result(path, model, dataset, acc1, mpcr, source="real", kind="student", loss="l2", params=5e6,
            templates="paper"):
    info = {"kind": kind, "arch": "tiny_vit_5m_224" if kind == "student" else "ViT-B-32", "image_params": params,
            "loss": loss if kind == "student" else None}
    common.save_json({"dataset": dataset, "model": model, "templates": templates, "n": 100, "source": source,
                      "metrics": {"acc1": acc1, "acc5": 1.0, "mean_per_class_recall": mpcr}, "model_info": info},
                     path)


def _cells(out, model):
    row = next(line for line in out.splitlines() if line.startswith(f"| {model} "))
    return [c.strip() for c in row.strip().strip("|").split("|")]


# ----------------------------------------------------------------------------------------------
# the table: each row in the metric of the published row it is compared with

def test_table_cells_in_each_sources_metric(tmp_path, capsys):
    res, runs = tmp_path / "results", tmp_path / "runs" / "pets_l2"
    _result(res / "a.json", "pets_l2", "pets", acc1=0.80, mpcr=0.85)
    _result(res / "b.json", "pets_l2", "flowers", acc1=0.70, mpcr=0.60)
    _result(runs / "eval_holdout.json", "pets_l2", "pets", acc1=0.95, mpcr=0.95, source="synthetic")
    common.save_json({"dataset": "pets", "loss": "l2"}, runs / "args.json")  # a run's other JSON: passed over
    _result(res / "c.json", "pets_con", "cars", acc1=0.60, mpcr=0.50, loss="contrastive")
    _result(res / "t1.json", "ViT-B-32_dc", "pets", acc1=0.89, mpcr=0.91, kind="teacher", params=87.85e6,
            templates="clip_benchmark")
    _result(res / "t2.json", "ViT-B-32_dc", "dtd", acc1=0.50, mpcr=0.40, kind="teacher", params=87.85e6,
            templates="clip_benchmark")
    _result(res / "t3.json", "ViT-B-32_dc", "flowers", acc1=0.70, mpcr=0.75, kind="teacher", params=87.85e6)
    plot = tmp_path / "plot.png"
    bench.main(["table", str(res), str(tmp_path / "runs"), "--plot", str(plot)])
    out = capsys.readouterr().out
    # columns: model, params, compared with, pets, cars, flowers, food101, fgvc_aircraft, dtd, synthetic
    student = _cells(out, "pets_l2")
    assert student[:3] == ["pets_l2 (tiny_vit_5m_224, l2)", "5.00M", "paper: student L2, diverse synthetic"]
    assert student[3] == "80.00 top-1 (-7.50), mpcr 85.00"      # students in top-1 on Pets too: 80.00 - 87.5
    assert student[5] == "70.00 top-1 (+1.70), mpcr 60.00"      # Flowers: 70.00 - 68.3
    assert student[4] == "" and student[9] == "pets 95.0 (+15.0)"  # synthetic top-1 95 - real top-1 80
    contrastive = _cells(out, "pets_con")
    assert contrastive[2] == "paper: student contrastive"
    assert contrastive[4] == "60.00 top-1 (-4.20), mpcr 50.00"  # Cars: 60.00 - 64.2
    teacher = _cells(out, "ViT-B-32_dc")
    assert teacher[1:3] == ["87.85M", "open_clip: teacher ViT-B-32 datacomp_xl_s13b_b90k"]
    assert teacher[3] == "91.00 mpcr (+0.98), top-1 89.00"      # DataComp's metric for Pets: 91.00 - 90.02
    assert teacher[8] == "50.00 top-1 (-7.13), mpcr 40.00"      # and top-1 for DTD: 50.00 - 57.13
    # the teacher evaluated with the paper's templates: its own row, shown in DataComp's metric, not compared
    paper_templates = _cells(out, "ViT-B-32_dc, paper templates")
    assert paper_templates[5] == "75.00 mpcr (not compared: paper templates), top-1 70.00"
    assert teacher[5] == ""
    published = _cells(out, "open_clip: teacher ViT-B-32 datacomp_xl_s13b_b90k")
    assert published[3:9] == ["90.02 mpcr", "87.28 top-1", "73.53 mpcr", "86.32 top-1", "24.63 mpcr", "57.13 top-1"]
    assert _cells(out, "paper: student L2, diverse synthetic")[3] == "87.50 top-1"
    assert "assum" not in out.lower()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(out.strip().splitlines()[-1])
    assert record["command"] == "table"
    cell = record["record"]["rows"]["ViT-B-32_dc"]["real"]["pets"]
    assert cell["metric"] == "mean_per_class_recall" and cell["diff"] == pytest.approx(0.98)


@pytest.mark.parametrize("content, expect", [
    (b'{"dataset": "pets", "model": "caf\xe9"}', "is not UTF-8"),
    (b"{not json", "is not valid JSON"),
    (b"[1, 2]", "holds a JSON list, not a JSON object"),
    (b'{"dataset": "pets", "model": "m", "metrics": {"acc1": 0.5, "mean_per_class_recall": 0.5}}', "lacks 'templates'"),
    (b'{"dataset": "pets", "model": "m", "templates": "paper", "metrics": {"acc1": "high"}}', "must hold numbers"),
])
def test_table_bad_result_json_is_one_line(tmp_path, capsys, content, expect):
    _result(tmp_path / "results" / "good.json", "m", "pets", acc1=0.5, mpcr=0.5)
    (tmp_path / "results" / "bad.json").write_bytes(content)
    line = kit.exits_with_one_line(bench.main, ["table", str(tmp_path / "results")], capsys, expect)
    assert str(tmp_path / "results" / "bad.json") in line


def test_table_named_file_must_be_a_result(tmp_path, capsys):
    common.save_json({"dataset": "pets", "loss": "l2"}, tmp_path / "args.json")
    kit.exits_with_one_line(bench.main, ["table", str(tmp_path / "args.json")], capsys, "lacks 'model', 'templates'")
    kit.exits_with_one_line(bench.main, ["table", str(tmp_path / "missing.json")], capsys, "does not exist")


def test_table_without_results_fails(tmp_path, capsys):
    kit.exits_with_one_line(bench.main, ["table", str(tmp_path)], capsys, "no zeroshot result JSON")


# ----------------------------------------------------------------------------------------------
# the GPU check, at tiny sizes on the CPU

def test_gpu_check_tiny_runs_every_part(tmp_path, capsys):
    out = tmp_path / "check"
    record = bench.main(["gpu", "--tiny", "--device", "cpu", "--out", str(out)])
    assert record["passed"] and list(record["parts"]) == list(bench_gpu.PARTS)
    saved = json.loads((out / "gpu.json").read_text())
    assert saved["passed"] and saved["versions"]["torch"] == torch.__version__ and saved["date"]
    parts = saved["parts"]
    assert parts["synth"]["numbers"]["img/s batch 4 (2 steps, 64 px)"] > 0
    assert parts["synth"]["numbers"]["synth.py img/s (37 images, batch 4)"] > 0
    assert parts["zeroshot"]["numbers"]["top-1 agreement bf16 vs fp32 %"] == 100.0  # CPU: autocast is off
    assert parts["zeroshot"]["numbers"]["max |predict logit - fp32 logit of the same bf16 embedding|"] <= 1e-4
    assert parts["distill"]["numbers"]["img/s torch.compile (aot_eager) + channels_last: cached (default)"] > 0
    assert parts["distill"]["numbers"]["data path CPU ms/img, gather from the store"] > 0
    first, last = map(float, parts["stage3"]["numbers"]["loss, first and last logged"].split(" -> "))
    assert last < first
    report = (out / "report.md").read_text()
    assert "- result: all parts passed" in report and "## stage3: passed" in report
    assert record["device"] in report and f"torch {torch.__version__}" in report
    kit.exits_with_one_line(bench.main, ["gpu", "--tiny", "--device", "cpu", "--out", str(out)], capsys,
                            "pass --overwrite")


def test_gpu_check_failing_part_keeps_the_others(tmp_path, capsys, monkeypatch):
    import synth

    def broken(source, device):
        raise RuntimeError("CUDA error: no kernel image is available")
    monkeypatch.setattr(synth, "load_generator", broken)
    out = tmp_path / "check"
    with pytest.raises(SystemExit) as e:
        bench.main(["gpu", "--tiny", "--device", "cpu", "--parts", "synth", "zeroshot", "--out", str(out)])
    assert e.value.code == 1
    assert "gpu check failed: synth (RuntimeError: CUDA error" in capsys.readouterr().err
    saved = json.loads((out / "gpu.json").read_text())
    assert not saved["passed"] and list(saved["parts"]) == ["zeroshot", "synth"]
    assert saved["parts"]["synth"]["problems"] == ["RuntimeError: CUDA error: no kernel image is available"]
    assert saved["parts"]["zeroshot"]["passed"] and saved["parts"]["zeroshot"]["numbers"]
    assert "Traceback" in (out / "synth.log").read_text()
    assert "## synth: FAILED" in (out / "report.md").read_text()


def test_gpu_check_stops_a_part_at_twice_its_budget(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_gpu.BUDGET_S, "zeroshot", 1)
    monkeypatch.setitem(bench_gpu.CHECKS, "zeroshot", lambda sz, ctx, numbers, problems: (
        numbers.update(started=1), time.sleep(30)))
    ctx = bench_gpu.Context(None, torch.device("cpu"), tmp_path, tmp_path, bench_gpu.REAL)
    t0 = time.perf_counter()
    part = bench_gpu.run_part("zeroshot", bench_gpu.REAL, ctx)
    assert time.perf_counter() - t0 < 10
    assert part["problems"] == ["PartTimeout: stopped after 2 s"] and part["numbers"] == {"started": 1}


# A fresh process whose imports of diffusers and open_clip fail as on a host without them, whatever this one holds.
BLOCKED = """import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('diffusers', 'open_clip'):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
sys.meta_path.insert(0, NotInstalled())
sys.path.insert(0, sys.argv[1])
import bench
bench.main(sys.argv[2:])
"""


def test_gpu_check_without_diffusers_and_open_clip_runs_the_rest(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "-c", BLOCKED, str(ROOT), "gpu", "--tiny", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    saved = json.loads((out / "gpu.json").read_text())
    assert saved["versions"]["diffusers"] == saved["versions"]["open_clip"] == "not installed"
    assert saved["versions"]["timm"] and saved["versions"]["transformers"][0].isdigit()
    parts = saved["parts"]
    assert list(parts) == list(bench_gpu.PARTS)
    assert parts["synth"]["problems"] == ["skipped: diffusers not installed", "skipped: open_clip not installed"]
    for name in ("zeroshot", "stage3", "distill"):
        assert parts[name]["status"] == "skipped" and parts[name]["problems"] == ["skipped: open_clip not installed"]
    assert parts["student"]["status"] == "passed", parts["student"]["problems"]
    assert parts["student"]["numbers"]["img/s torch.compile (aot_eager) + channels_last (test_vit, batch 8, 64 px)"] > 0
    report = (out / "report.md").read_text()
    assert "## student: passed" in report and "## synth: skipped" in report and "diffusers not installed" in report
    assert "gpu check failed: zeroshot (skipped: open_clip not installed)" in proc.stderr


def test_gpu_check_nan_fails_its_part_and_the_next_part_runs(tmp_path, monkeypatch):
    real_predict = bench_gpu.zeroshot.predict

    def nan_logits(*args, **kwargs):
        logits, *rest = real_predict(*args, **kwargs)
        logits[0, 0] = float("nan")
        return (logits, *rest)
    monkeypatch.setattr(bench_gpu.zeroshot, "predict", nan_logits)
    monkeypatch.setitem(bench_gpu.CHECKS, "student", lambda sz, ctx, numbers, problems: numbers.update(ran=1.0))
    out = tmp_path / "check"
    with pytest.raises(SystemExit):
        bench.main(["gpu", "--tiny", "--device", "cpu", "--parts", "zeroshot", "student", "--out", str(out)])
    parts = json.loads((out / "gpu.json").read_text())["parts"]
    zs = parts["zeroshot"]
    assert zs["status"] == "FAILED" and "non-finite logits" in zs["problems"]
    key = "max |predict logit - fp32 logit of the same bf16 embedding|"
    assert zs["numbers"][key] is None and f"non-finite number: {key} = nan" in zs["problems"]
    assert parts["student"]["status"] == "passed" and parts["student"]["numbers"] == {"ran": 1.0}
    assert "## zeroshot: FAILED" in (out / "report.md").read_text()


def _fake_parts(monkeypatch, **checks):
    """Every part a stand-in that records one number, unless given; no part needs a package."""
    monkeypatch.setattr(bench_gpu, "NEEDS", dict.fromkeys(bench_gpu.PARTS, ()))
    monkeypatch.setattr(bench_gpu, "versions", lambda: {"torch": torch.__version__})  # no imports in the deadline
    for name in bench_gpu.PARTS:
        monkeypatch.setitem(bench_gpu.CHECKS, name, checks.get(name, lambda sz, ctx, numbers, problems: (
            numbers.update(done=1.0))))


def test_gpu_check_deadline_cuts_the_parts_past_it(tmp_path, monkeypatch):
    _fake_parts(monkeypatch, student=lambda sz, ctx, numbers, problems: (numbers.update(started=1.0),
                                                                         time.sleep(30)))
    out = tmp_path / "check"
    with pytest.raises(SystemExit):
        bench.main(["gpu", "--tiny", "--device", "cpu", "--deadline", "5", "--out", str(out)])
    saved = json.loads((out / "gpu.json").read_text())
    status = {name: part["status"] for name, part in saved["parts"].items()}
    assert status == {"zeroshot": "passed", "student": "cut", "stage3": "cut", "synth": "cut", "distill": "cut"}
    assert saved["parts"]["student"]["numbers"] == {"started": 1.0}
    assert saved["parts"]["student"]["problems"][0].startswith("cut: stopped at the --deadline")
    assert saved["parts"]["distill"]["problems"] == ["cut: not started, the --deadline of 5 s had passed"]
    assert "- result: cut: student, stage3, synth, distill" in (out / "report.md").read_text()


KILLED = """import pathlib, sys, time
sys.path.insert(0, sys.argv[1])
import bench
from helpers import bench_gpu
def third(sz, ctx, numbers, problems):
    pathlib.Path(sys.argv[2], 'third.started').write_text('')
    time.sleep(120)
bench_gpu.versions = lambda: {'torch': '2'}
bench_gpu.NEEDS = dict.fromkeys(bench_gpu.PARTS, ())
bench_gpu.CHECKS.update({name: lambda sz, ctx, numbers, problems: numbers.update(done=1.0)
                         for name in bench_gpu.PARTS[:2]}, **{bench_gpu.PARTS[2]: third})
bench.main(['gpu', '--tiny', '--device', 'cpu', '--out', sys.argv[2]])
"""


def test_gpu_check_killed_in_the_third_part_keeps_the_first_two(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(ROOT), str(out)], stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if (out / "third.started").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (out / "third.started").exists(), proc.stderr.read() if proc.poll() is not None else "timed out"
        proc.kill()  # SIGKILL: nothing in the process runs after it
    finally:
        proc.kill()
        proc.wait()
    parts = json.loads((out / "gpu.json").read_text())["parts"]
    first, second, third = bench_gpu.PARTS[:3]
    assert parts[first]["status"] == parts[second]["status"] == "passed"
    assert parts[third]["status"].startswith("running")
    report = (out / "report.md").read_text()
    assert f"## {first}: passed" in report and f"## {second}: passed" in report


def test_gpu_check_bad_input(tmp_path, capsys):
    kit.exits_with_one_line(bench.main, ["gpu", "--device", "cpu", "--out", str(tmp_path)], capsys,
                            "needs a CUDA GPU")
    kit.exits_with_one_line(bench.main, ["gpu", "--tiny", "--device", "cpu"], capsys, "needs --out DIR")
    kit.exits_with_one_line(bench.main, ["gpu", "--tiny", "--device", "cpu", "--parts", "synthesis", "--out",
                                         str(tmp_path)], capsys, "unknown --parts synthesis")
    (tmp_path / "file").write_text("")
    kit.exits_with_one_line(bench.main, ["gpu", "--tiny", "--device", "cpu", "--out", str(tmp_path / "file")],
                            capsys, "is a file, not a folder")


def test_sd15_components_have_the_published_sizes():
    unet, vae, text_encoder = bench_gpu.sd15_components("meta")  # no memory, no init: shapes only
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD-1.5's UNet, VAE, CLIP ViT-L/14 text tower
    assert unet.config.sample_size * 8 == 512 and unet.config.cross_attention_dim == 768


# ----------------------------------------------------------------------------------------------
# the timing sub-commands, tiny

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
    table, record = bench.bench_train(args, torch.device("cpu"), bench.TRAIN_VARIANTS)
    assert "| eager | cached (default) |" in table and "| eager | --no-cache (teacher online) |" in table
    assert set(record["variants"]) == {"eager, AdamW looping over parameters", "eager", "channels_last"}
    assert f"<- {tiny_teacher} (the folder's weights)," in table
    assert record["student"] == "test_vit" and record["image_size"] == 64 and record["store_build_s_per_1000"] > 0
    assert set(record["data_path_cpu_ms_per_img"]) == {"pil", "gather", "render"}
    assert set(record["variants"]["eager"]["img_per_s"]) == {"student only (no teacher)", "cached (default)",
                                                             "--no-cache (teacher online)"}


def test_store_resolution_study_runs_tiny(monkeypatch):
    table, record = bench.bench_store(SimpleNamespace(), torch.device("cpu"), resolutions=(64, 128),
                                      scales=((0.08, 0.1), (0.9, 1.0)), n_images=4, size=256)
    assert "| 64 |" in table and "| 128 |" in table
    psnr = record["psnr_db"]
    assert psnr["R128 area 0.08-0.1"] > psnr["R64 area 0.08-0.1"]  # a finer store keeps small crops closer
    assert record["gb_per_dataset"]["R128 pets"] == pytest.approx(265 * 37 * 128 * 128 * 3 / 1e9)
