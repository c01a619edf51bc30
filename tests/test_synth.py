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

from helpers import common, domains
import kit
import kit_diffusers
import synth
from helpers import synth_folder

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = len(domains.CLASSNAMES["pets"])
BASE = ["--dataset", "pets", "--per-class", "2", "--steps", "2", "--size", "32", "--guidance", "0.5",
        "--batch-size", "4"]
KEYS = ["path", "label", "classname", "prompt", "seed", "generator"]


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
    saved, real_save = [], synth_folder.save_image

    def save_then_die(array, path, *a):
        if len(saved) >= 11:  # two writer threads: >=, not ==
            raise RuntimeError("simulated kill")
        real_save(array, path, *a)
        saved.append(path)
    monkeypatch.setattr(synth_folder, "save_image", save_then_die)
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


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "imagenet"], "--dataset must be pets | flowers | cars | food101 | dtd | fgvc_aircraft (got "),
    (["--generator", "sd99-fast"], "unknown generator 'sd99-fast'"),
    (["--generator", "nobody/no-such-model"], "nobody/no-such-model is not in the local Hugging Face cache"),
    (["--generator", "sd15-lcm"], "Lykon/dreamshaper-7 is not in the local Hugging Face cache"),
    (["--per-class", "0"], "--per-class must be at least 1"),
    (["--shard", "2/2"], "--shard must be i/n"),
    (["--dtype", "float8"], "--dtype must be auto | float16 | bfloat16 | float32 (got 'float8')"),
])
def test_bad_input_fails_fast_with_one_line(argv, words, tmp_path, capsys):
    t0 = time.time()
    kit.exits_with_one_line(synth.main, argv + ["--out", str(tmp_path)], capsys, words)
    assert time.time() - t0 < 10
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
    err = kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path), *extra],
                                  capsys, words)
    assert "holds" in err
    assert {**snapshot(folder), "synth.json": (folder / "synth.json").read_bytes()} == before


def test_other_generator_on_the_same_folder_is_refused(tiny_sd, reference, tmp_path, capsys):
    folder = tmp_path / "pets"
    shutil.copytree(reference[0], folder)
    other = kit_diffusers.make_tiny_pipeline(tmp_path / "other_sd", seed=1)
    kit.exits_with_one_line(synth.main, BASE + ["--generator", str(other), "--out", str(tmp_path)], capsys,
                            "holds a different run (generator:")
    assert snapshot(folder) == reference[1]


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


# ----------------------------------------------------------------------------------------------
# the default preset offline, from a filled Hugging Face cache

@pytest.fixture
def two_pets(monkeypatch):
    """Two classes instead of 37 keep a run short; the code path is the same."""
    monkeypatch.setitem(domains.CLASSNAMES, "pets", ["Beagle", "Persian"])


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    """{repo id: snapshot folder} of a hub cache holding sd15-lcm's two repos (tiny stand-ins)."""
    return kit_diffusers.make_fake_hub_cache(tmp_path_factory.mktemp("hub") / "hub")


def spy_on_load_generator(monkeypatch, change=None):
    """Let synth.main load its pipeline as usual, keep it for the test, and apply `change` to it (a fault)."""
    loaded, real = [], synth.load_generator

    def load(*args):
        pipe, dtype = real(*args)
        if change:
            with torch.no_grad():
                change(pipe)
        loaded.append(pipe)
        return pipe, dtype
    monkeypatch.setattr(synth, "load_generator", load)
    return loaded


def test_default_preset_loads_offline_from_the_hub_cache_with_the_lora_fused(fake_hub, two_pets, tmp_path,
                                                                             monkeypatch):
    """sd15-lcm with HF_HUB_OFFLINE=1 and no path given: diffusers must be told the LoRA's file name."""
    import safetensors.torch
    from diffusers import UNet2DConditionModel
    kit_diffusers.use_hub_cache(monkeypatch, fake_hub["Lykon/dreamshaper-7"].parents[2])
    loaded = spy_on_load_generator(monkeypatch)
    synth.main(["--dataset", "pets", "--per-class", "2", "--steps", "2", "--size", "32", "--out", str(tmp_path)])
    rows = manifest(tmp_path / "pets")
    assert len(rows) == 4 and {r["generator"] for r in rows} == {"sd15-lcm"}
    pipe = loaded[0]
    assert type(pipe.scheduler).__name__ == "LCMScheduler"  # the cached snapshot's is PNDM
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    # fused: W = W0 + alpha / rank * up @ down, with the LoRA's alpha = 8 and rank = 4 (a linear and a conv layer)
    base = UNet2DConditionModel.from_pretrained(fake_hub["Lykon/dreamshaper-7"] / "unet")
    lora = safetensors.torch.load_file(fake_hub["latent-consistency/lcm-lora-sdv1-5"] / synth.LCM_LORA_FILE)
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1"):
        key = "lora_unet_" + name.replace(".", "_")
        w0 = base.get_submodule(name).weight
        up, down = lora[key + ".lora_up.weight"].float(), lora[key + ".lora_down.weight"].float()
        expected = w0 + 8 / 4 * (up.flatten(1) @ down.flatten(1)).view(w0.shape)
        fused = pipe.unet.get_submodule(name).weight
        assert (fused - w0).abs().max() > 0.1 and torch.allclose(fused, expected, atol=1e-4), name


def test_sdxl_lcm_preset_loads_its_lora_offline_too(fake_hub, tmp_path, monkeypatch):
    """No tiny SDXL: the SD 1.5 stand-ins under sdxl-lcm's repo ids show that its LoRA's file is named."""
    cache = tmp_path / "hub"
    kit.add_to_hub_cache(cache, "stabilityai/stable-diffusion-xl-base-1.0", fake_hub["Lykon/dreamshaper-7"])
    kit.add_to_hub_cache(cache, "latent-consistency/lcm-lora-sdxl", fake_hub["latent-consistency/lcm-lora-sdv1-5"])
    kit_diffusers.use_hub_cache(monkeypatch, cache)
    name, source = synth.resolve_generator("sdxl-lcm")
    pipe, _ = synth.load_generator(source, torch.device("cpu"))
    assert source["lora_file"] == synth.LCM_LORA_FILE and type(pipe.scheduler).__name__ == "LCMScheduler"
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())


# ----------------------------------------------------------------------------------------------
# float16, and NaN pixels never saved as black images

def images_of(folder):
    return {r["path"]: np.asarray(Image.open(folder / r["path"])).astype(int) for r in manifest(folder)}


def test_float16_pipeline_runs_on_cpu(tiny_sd, two_pets, tmp_path, capsys):
    """The GPU's float16 path, on a CPU: same images as float32 up to float16 rounding."""
    run(tiny_sd, tmp_path / "fp32")
    run(tiny_sd, tmp_path / "fp16", "--dtype", "float16", "--device", "cpu")
    assert "| cpu float16 |" in capsys.readouterr().out
    fp32, fp16 = images_of(tmp_path / "fp32" / "pets"), images_of(tmp_path / "fp16" / "pets")
    assert fp32.keys() == fp16.keys() and len(fp16) == 4
    assert all(np.abs(fp32[k] - fp16[k]).max() <= 3 and fp16[k].std() > 1 for k in fp16)
    pipe, dtype = synth.load_generator(dict(model=str(tiny_sd), lora=None), torch.device("cpu"), torch.float16)
    assert dtype == pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16


def overflow_vae(pipe):
    """Activations past float16's 65504 (group norm makes them harmless in float32): NaN, as in SDXL's VAE."""
    pipe.vae.decoder.conv_in.weight.mul_(1e4)


def test_float16_vae_overflow_is_decoded_again_in_float32(tiny_sd, two_pets, tmp_path, monkeypatch, capsys):
    spy_on_load_generator(monkeypatch, overflow_vae)
    run(tiny_sd, tmp_path / "fp32")  # float32: the same weights decode without NaN
    run(tiny_sd, tmp_path / "fp16", "--dtype", "float16", "--device", "cpu")
    out = capsys.readouterr().out
    assert "the VAE overflowed to NaN in float16" in out and "4 decoded again in float32" in out
    fp32, fp16 = images_of(tmp_path / "fp32" / "pets"), images_of(tmp_path / "fp16" / "pets")
    assert all(np.abs(fp32[k] - fp16[k]).max() <= 3 and fp16[k].std() > 1 for k in fp16)  # not black


def test_vae_nan_in_float32_stops_before_saving(tiny_sd, two_pets, tmp_path, monkeypatch, capsys):
    spy_on_load_generator(monkeypatch, lambda pipe: pipe.vae.decoder.conv_in.weight[0, 0, 0].fill_(float("nan")))
    kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path)], capsys,
                            "the generator's VAE returned NaN for image 000/00000")
    assert not list((tmp_path / "pets").rglob("*.png"))


def test_denoiser_nan_asks_for_float32(tiny_sd, two_pets, tmp_path, monkeypatch, capsys):
    spy_on_load_generator(monkeypatch, lambda pipe: pipe.unet.conv_out.weight.fill_(float("nan")))
    err = kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path), "--dtype",
                                                      "float16", "--device", "cpu"], capsys, "pass --dtype float32")
    assert "denoiser returned NaN" in err and "in float16" in err
    assert not list((tmp_path / "pets").rglob("*.png"))


# ----------------------------------------------------------------------------------------------
# file-system faults: one line, exit 2, nothing written

def files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def test_out_that_is_a_file_is_refused(tiny_sd, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path / "out")], capsys,
                            f"--out {tmp_path / 'out'} is a file, not a folder")
    assert files_under(tmp_path) == {"out": b"not a folder"}


def test_out_on_a_read_only_file_system_is_refused(tiny_sd, tmp_path, monkeypatch, capsys):
    """EROFS simulated at the write probe (root ignores chmod); the real mount is the next test."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path)], capsys,
                            f"--out {tmp_path} is not a writable folder (Read-only file system)")
    assert not any(tmp_path.iterdir())


def test_out_on_a_read_only_mount_is_refused(tiny_sd, tmp_path, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(mount)], capsys,
                                f"--out {mount} is not a writable folder (Read-only file system)")
        assert not any(mount.iterdir())
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("content, words", [
    (b'["per_class", 2]\n', "holds a JSON list, not a JSON object"),
    (b'{"dataset": "pets"}\n', "lacks 'per_class'"),
    (b'{"dataset": "pets", "per_class": "two"}\n', "per_class is not a whole number"),
    ('{"dataset": "pets", "note": "caf\u00e9"}\n'.encode("latin-1"), "is not UTF-8 text"),
], ids=["list", "no-per-class", "per-class-text", "latin-1"])
def test_broken_synth_json_is_refused_before_loading(tiny_sd, tmp_path, monkeypatch, capsys, content, words):
    folder = tmp_path / "pets"
    folder.mkdir()
    (folder / "synth.json").write_bytes(content)
    monkeypatch.setattr(synth, "load_generator", lambda *a: pytest.fail("loaded the generator"))
    kit.exits_with_one_line(synth.main, BASE + ["--generator", str(tiny_sd), "--out", str(tmp_path)], capsys, words)
    assert files_under(tmp_path) == {"pets/synth.json": content}


def test_a_folder_made_before_the_lora_file_was_named_is_the_same_run(tmp_path):
    folder = tmp_path / "pets"
    source = {"model": "Lykon/dreamshaper-7", "lora": "latent-consistency/lcm-lora-sdv1-5"}
    old = {k: None for k in synth_folder.IDENTITY} | {"per_class": 2, "generator_source": source}
    common.save_json(old, folder / "synth.json")
    now = dict(old, per_class=3, generator_source=dict(source, lora_file="pytorch_lora_weights.safetensors"))
    assert synth_folder.check_folder(folder, now) == 3  # extends it, instead of "a different run"
    other = dict(now, generator_source=dict(source, lora="someone/other-lora", lora_file="x.safetensors"))
    with pytest.raises(common.UserError, match="different run"):
        synth_folder.check_folder(folder, other)
