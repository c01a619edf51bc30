"""synth.py on a tiny random diffusers pipeline (tests/kit_diffusers.py), in-process, offline.

Byte-identity is checked on real files: images, manifest. Runs use one CPU thread (as torchrun's workers do):
float results of a batched forward depend on the thread count and on the batch composition, see test_batch_size.
"""
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import domains
import kit_diffusers
import synth

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = len(domains.CLASSNAMES["pets"])
BASE = ["--dataset", "pets", "--per-class", "2", "--steps", "2", "--size", "32", "--guidance", "0.5",
        "--batch-size", "4"]
KEYS = ["path", "label", "classname", "prompt", "seed", "generator"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return kit_diffusers.make_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))


def run(tiny_sd, out, *extra):
    synth.main(BASE + ["--generator", str(tiny_sd), "--out", str(out), *extra])
    return Path(out) / "pets"


def snapshot(folder):
    """{relative path: bytes} of the manifest and every image file (temp files included, so strays show)."""
    files = {"manifest.jsonl": (folder / "manifest.jsonl").read_bytes()}
    files.update({str(p.relative_to(folder)): p.read_bytes() for p in (folder / "images").rglob("*") if p.is_file()})
    return files


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_sd, tmp_path_factory):
    """One uninterrupted run (1 thread): the set every other way of running must reproduce byte for byte."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = run(tiny_sd, tmp_path_factory.mktemp("ref"))
    torch.set_num_threads(threads)
    return folder, snapshot(folder)


def test_counts_decode_and_prompts(reference):
    folder, files = reference
    rows = manifest(folder)
    assert len(rows) == 2 * N_CLASSES and len(files) == 2 * N_CLASSES + 1
    assert all(list(r) == KEYS for r in rows)
    assert [(r["label"], r["path"]) for r in rows] == [(c, f"images/{c:03d}/{n:05d}.png")
                                                       for c in range(N_CLASSES) for n in range(2)]
    arrays = []
    for r in rows:
        assert r["classname"] == domains.CLASSNAMES["pets"][r["label"]]
        assert r["prompt"].startswith(f"a photo of a {r['classname']}, a type of pet, ")
        with Image.open(folder / r["path"]) as im:
            assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
            arrays.append(np.asarray(im))
    assert all(a.std() > 1 for a in arrays)  # not blank
    assert len({a.tobytes() for a in arrays}) == len(arrays) and len({r["seed"] for r in rows}) == len(rows)
    for c in range(N_CLASSES):  # the diverse prompts of a class all differ
        assert len({r["prompt"] for r in rows if r["label"] == c}) == 2
    items, classnames, info = synth.common.load_manifest(folder)  # what distill.py and zeroshot.py read
    assert len(items) == len(rows) and classnames == domains.CLASSNAMES["pets"]
    assert info["dataset"] == "pets" and info["generator"] == str(Path(info["generator"]).resolve())
    assert (info["steps"], info["guidance"], info["size"], info["per_class"]) == (2, 0.5, 32, 2)


def test_rerun_is_byte_identical_and_skips(tiny_sd, reference, tmp_path, capsys):
    folder = run(tiny_sd, tmp_path)
    assert snapshot(folder) == reference[1]
    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.png")}
    capsys.readouterr()
    run(tiny_sd, tmp_path)  # same folder: nothing to do
    assert f"wrote 0, skipped {2 * N_CLASSES}" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.png")} == mtimes
    assert snapshot(folder) == reference[1]


def test_cut_short_then_rerun_equals_uninterrupted(tiny_sd, reference, tmp_path, monkeypatch):
    saved, real_save = [], synth.save_image

    def save_then_die(array, path, *a):
        if len(saved) >= 11:  # two writer threads: >=, not ==
            raise RuntimeError("simulated kill")
        real_save(array, path, *a)
        saved.append(path)
    monkeypatch.setattr(synth, "save_image", save_then_die)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(tiny_sd, tmp_path)
    monkeypatch.undo()
    folder = tmp_path / "pets"
    rows = manifest(folder)  # consistent after the kill: every line names a finished file
    assert 11 <= len(rows) == len(saved) < 2 * N_CLASSES and all((folder / r["path"]).is_file() for r in rows)
    assert sorted((folder / "images").rglob("*.png")) == sorted(saved)
    # what a real kill can also leave: a half-written temp file and a torn last manifest line
    (folder / "images" / "005" / ".00001.png.x1y2z3.tmp").write_bytes(b"\x89PNG half")
    with open(folder / "manifest.jsonl", "a") as f:
        f.write('{"path": "images/0')
    run(tiny_sd, tmp_path)
    assert snapshot(folder) == reference[1]


def test_two_shards_give_the_unsharded_set(tiny_sd, reference, tmp_path):
    run(tiny_sd, tmp_path, "--shard", "1/2")  # the second shard first: no shard is special
    half = manifest(tmp_path / "pets")
    assert 0 < len(half) < 2 * N_CLASSES  # a shard's manifest lists its own finished files
    run(tiny_sd, tmp_path, "--shard", "0/2")
    assert snapshot(tmp_path / "pets") == reference[1]


def test_torchrun_two_processes_give_the_same_set(tiny_sd, reference, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "synth.py",
           *BASE, "--generator", str(tiny_sd), "--out", str(tmp_path), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done (rank 0)" in proc.stdout and "done (rank 1)" in proc.stdout
    assert snapshot(tmp_path / "pets") == reference[1]


def test_batch_size_changes_at_most_rounding(tiny_sd, reference, tmp_path):
    """Batched kernels sum in another order for another batch, so a few pixels may move by one level; prompts,
    seeds, paths and every other byte of the manifest stay the same."""
    folder = run(tiny_sd, tmp_path, "--batch-size", "3")
    files = snapshot(folder)
    assert files.keys() == reference[1].keys() and files["manifest.jsonl"] == reference[1]["manifest.jsonl"]
    for name in files.keys() - {"manifest.jsonl"}:
        a, b = (np.asarray(Image.open(io.BytesIO(f[name]))).astype(int) for f in (files, reference[1]))
        assert np.abs(a - b).max() <= 1, name


def test_larger_per_class_extends_the_run(tiny_sd, reference, tmp_path, capsys):
    folder = tmp_path / "pets"
    shutil.copytree(reference[0], folder)
    synth.main(BASE[:2] + ["--per-class", "3"] + BASE[4:] + ["--generator", str(tiny_sd), "--out", str(tmp_path)])
    assert f"wrote {N_CLASSES}, skipped {2 * N_CLASSES}" in capsys.readouterr().out
    files = snapshot(folder)
    assert len(manifest(folder)) == 3 * N_CLASSES and all(files[k] == v for k, v in reference[1].items()
                                                            if k != "manifest.jsonl")
    assert json.loads((folder / "synth.json").read_text())["per_class"] == 3


def test_simple_prompts_jpg_and_save_size(tiny_sd, tmp_path):
    folder = run(tiny_sd, tmp_path, "--prompts", "simple", "--format", "jpg", "--save-size", "16", "--per-class", "1")
    rows = manifest(folder)
    assert [r["prompt"] for r in rows] == [f"a photo of a {c}" for c in domains.CLASSNAMES["pets"]]
    for r in rows:
        assert r["path"].endswith(".jpg")
        with Image.open(folder / r["path"]) as im:
            assert im.format == "JPEG" and im.size == (16, 16)


def test_dry_run_prints_and_writes_nothing(tmp_path, capsys):
    synth.main(["--dataset", "dtd", "--per-class", "3", "--out", str(tmp_path), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 47 + 1 and "47 classes x 3 = 141 images" in lines[-1]
    assert "a photo of a banded texture, " in lines[0] and not any(tmp_path.iterdir())


def test_make_prompts_pairwise_covering_distinct_and_stable():
    names = domains.CLASSNAMES["pets"][:2]
    slots = domains.PROMPT_SLOTS["pets"]
    order = [list(slots)[i] for i in (2, 0, 1, 3)]
    full = synth.make_prompts("pets", names, 500, "diverse", seed=0)
    for prompts in full:
        assert len(set(prompts)) == 500
        rows = [p.split(", ")[2:] for p in prompts[:225]]  # after "a photo of a Abyssinian", "a type of pet"
        assert all(len(r) == 4 and all(r[k] in slots[order[k]] for k in range(4)) for r in rows), prompts[0]
        for i, j in itertools.combinations(range(4), 2):  # every pair of options of every pair of slots, once
            assert len({(r[i], r[j]) for r in rows}) == 225
    assert full[0] != full[1]
    assert synth.make_prompts("pets", names, 7, "diverse", seed=0) == [p[:7] for p in full]  # no --per-class effect
    assert synth.make_prompts("pets", names, 7, "diverse", seed=1) != [p[:7] for p in full]
    assert synth.image_seed(0, 1, 2) == synth.image_seed(0, 1, 2) != synth.image_seed(0, 2, 1)


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as e:
        synth.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--generator", "sd99-fast"], "unknown generator 'sd99-fast'"),
    (["--generator", "nobody/no-such-model"], "nobody/no-such-model is not in the local Hugging Face cache"),
    (["--generator", "sd15-lcm"], "Lykon/dreamshaper-7 is not in the local Hugging Face cache"),
    (["--per-class", "0"], "--per-class must be at least 1"),
    (["--shard", "2/2"], "--shard must be i/n"),
])
def test_bad_input_fails_fast_with_one_line(argv, words, tmp_path, capsys):
    t0 = time.time()
    err = _fails(argv + ["--out", str(tmp_path)], capsys)
    assert words in err and time.time() - t0 < 10
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("extra, words", [
    (["--steps", "3"], "steps: 2 vs 3"),
    (["--prompts", "simple"], "prompts: 'diverse' vs 'simple'"),
    (["--seed", "1"], "seed: 0 vs 1"),
    (["--per-class", "1"], "holds 2 images per class"),
])
def test_folder_of_a_different_run_is_refused(tiny_sd, reference, tmp_path, capsys, extra, words):
    folder = tmp_path / "pets"
    shutil.copytree(reference[0], folder)
    before = {**snapshot(folder), "synth.json": (folder / "synth.json").read_bytes()}
    err = _fails(BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path), *extra], capsys)
    assert "holds" in err and words in err
    assert {**snapshot(folder), "synth.json": (folder / "synth.json").read_bytes()} == before


def test_other_generator_on_the_same_folder_is_refused(tiny_sd, reference, tmp_path, capsys):
    folder = tmp_path / "pets"
    shutil.copytree(reference[0], folder)
    other = kit_diffusers.make_tiny_pipeline(tmp_path / "other_sd", seed=1)
    err = _fails(BASE + ["--generator", str(other), "--out", str(tmp_path)], capsys)
    assert "holds a different run (generator:" in err and snapshot(folder) == reference[1]


def test_lora_is_fused_into_the_weights(tiny_sd, tmp_path):
    """The LCM presets' path: LoRA loaded, fused, its layers dropped, scheduler switched to LCM."""
    from diffusers import StableDiffusionPipeline
    lora = kit_diffusers.make_tiny_lora(tmp_path / "lora", tiny_sd)
    plain, _ = synth.load_generator(dict(model=str(tiny_sd), lora=None), torch.device("cpu"))
    fused, _ = synth.load_generator(dict(model=str(tiny_sd), lora=str(lora)), torch.device("cpu"))
    unfused = StableDiffusionPipeline.from_pretrained(tiny_sd)
    unfused.load_lora_weights(lora)
    assert type(fused.scheduler).__name__ == "LCMScheduler"
    assert not any("lora" in name for name, _ in fused.unet.named_modules())
    kw = dict(prompt=["a photo of a cat"], num_inference_steps=2, guidance_scale=0.5, height=32, width=32,
              output_type="np")
    a, b, c = (p(generator=[torch.Generator().manual_seed(0)], **kw).images for p in (plain, fused, unfused))
    assert np.abs(a - b).max() > 0.01 and np.abs(b - c).max() < 1e-4  # the LoRA acts, fused as unfused
