"""How bench.py measures: the environment line, timing, FLOPs, random-weight stand-ins for the real models, and
the speed of one distill.py training step (`bench_train`).

Timing method: `warmup` untimed calls, then `runs` timed calls (CUDA synchronised before each clock read), the
median reported. Random weights everywhere: speed does not depend on them, and nothing is downloaded.
"""
import concurrent.futures
import functools
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image

import distill
from helpers import devices, domains, models, views

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MODES = ("student only (no teacher)", "cached (default)", "--no-cache (teacher online)")


# ----------------------------------------------------------------------------------------------
# the environment, timing, FLOPs, tables

def device_name(device):
    """The GPU's name, or the CPU's model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {torch.get_num_threads()} threads"


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device, dtype="fp32"):
    """One line describing where the numbers come from."""
    return f"torch {torch.__version__} | {device.type}: {device_name(device)} | {dtype} | commit {commit()}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, warmup, runs):
    """Median wall time of fn() over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(device):
    """Peak GPU memory since the last reset, in MiB (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def count_flops(model, x):
    """FLOPs of one forward (torch's counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def measure_model(model, device, dtype, batch_size, image_size, warmup, runs, channels_last=False, compile=False):
    """Inference speed of an image encoder: images/s at `batch_size`, latency at batch 1, peak GPU memory."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile else model
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    x1 = x[:1].clone()
    if channels_last:
        x, x1 = x.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else \
        (lambda: torch.autocast(device.type, enabled=False))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run(inp):
        with torch.inference_mode(), ctx():
            return fwd(inp)
    t_batch = time_call(lambda: run(x), device, warmup, runs)
    t_one = time_call(lambda: run(x1), device, warmup, runs)
    return {"images_per_s": batch_size / t_batch, "latency_ms": 1000 * t_one, "peak_mem_mib": peak_mib(device)}


# ----------------------------------------------------------------------------------------------
# stand-ins: the tests' offline kit, a random-weight open_clip teacher folder, a diffusers call

def import_test_kit(name):
    """tests/kit.py or tests/kit_diffusers.py: the repo's offline stand-ins (tiny models, fake data sets and synth
    folders), imported by path so that bench.py and the tests share one implementation."""
    folder = str(ROOT / "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def save_random_teacher(name, folder, seed=0):
    """open_clip's `name` (e.g. ViT-B-32) with random weights, saved as an open_clip folder; returns
    'local-dir:<folder>', the spec distill.py and zeroshot.py load it with."""
    import open_clip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(name),
                                                              "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(name).state_dict(), folder / "open_clip_pytorch_model.bin")
    return "local-dir:" + str(folder)


def generate(pipe, prompts, seeds, steps, guidance, size):
    """One diffusers call exactly as synth.py makes it: per-image CPU generators, numpy output. (B, H, W, 3)"""
    return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images


# ----------------------------------------------------------------------------------------------
# a training step: with the teacher cache, with the teacher online (--no-cache), the student alone

def write_smooth_pngs(folder, n, size=512, seed=0):
    """n smooth size x size PNGs, like synth.py's output (upsampled noise), written by one thread per core."""
    gen = torch.Generator().manual_seed(seed)
    small = [TF.to_pil_image(torch.rand(3, 16, 16, generator=gen)) for _ in range(n)]

    def save(i):  # PNG encoding releases the GIL: threads use every core
        small[i].resize((size, size), Image.BICUBIC).save(Path(folder) / f"{i:05d}.png")
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(save, range(n)))


def time_train_step(student_name, teacher, batch, device, warmup, runs, channels_last=False, compile_backend=None,
                    fused=True, modes=TRAIN_MODES):
    """Seconds of the kinds of step in `modes` (TRAIN_MODES), taking turns in rotating order so that load from other
    jobs hits all alike. The cached and --no-cache steps include rendering their crops from the image store on
    `device` (distill.py has no loader processes); the student-only step trains on crops made beforehand, the
    baseline. Every step feeds crops in the model's memory layout, as distill.py does, so that a compiled model runs
    one graph; each mode's first call (its compile, if any) is timed apart from its steps.
    batch: (render: () -> crops (B, 3, S, S) on device, image index (B,), view index (B,), cache emb; the last three
    None when only the student-only step is timed). teacher: embed_dim and image_size (and model for --no-cache)."""
    render, idx, view, cache_emb = batch
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x_ready = render().contiguous(memory_format=memory)
    B = len(x_ready)
    torch.manual_seed(0)
    student = models.build_student(student_name, teacher.embed_dim, image_size=teacher.image_size).to(device).train()
    student = student.to(memory_format=memory)
    forward = torch.compile(student, backend=compile_backend) if compile_backend else student
    optimizer = distill.make_optimizer(student, 5e-4, device, fused=fused)
    if cache_emb is not None:
        idx, view, cache_emb = idx.to(device), view.to(device), cache_emb.to(device)
    constant = torch.randn(B, teacher.embed_dim, device=device)

    def crops_and_target(mode):
        if mode == TRAIN_MODES[0]:
            return x_ready, constant
        x = render().contiguous(memory_format=memory)
        if mode == "cached (default)":
            return x, cache_emb[idx, view].float()
        with torch.no_grad(), devices.autocast(device):
            return x, teacher.model.encode_image(x).float()

    seconds, cpu = {m: [] for m in modes}, {m: [] for m in modes}  # CPU: this process's own work
    first_call = {}
    for r in range(max(1, warmup) + runs):  # at least one untimed round: torch.compile compiles there
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            x, t_emb = crops_and_target(mode)
            with devices.autocast(device):
                loss = distill.l2_loss(forward(x).float(), t_emb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            first_call.setdefault(mode, time.perf_counter() - t0)
            if r >= max(1, warmup):
                seconds[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
    rate = {m: B / statistics.median(s) for m, s in seconds.items()}
    cpu_ms = {m: 1000 * statistics.median(c) / B for m, c in cpu.items()}  # per image
    record = {"img_per_s": rate, "cpu_ms_per_img": cpu_ms, "first_call_s": first_call,
              "compile_s": {m: first_call[m] - statistics.median(s) for m, s in seconds.items()}}  # first call - a step
    if len(modes) == len(TRAIN_MODES):
        record["cached_vs_student_only"] = rate["cached (default)"] / rate["student only (no teacher)"]
        record["cached_vs_no_cache"] = rate["cached (default)"] / rate["--no-cache (teacher online)"]
    return record


def time_data_path(images, resolution, mean, std, device, batch_size, n=32):
    """CPU ms per image of the two data paths, on the same 512 px PNGs and crop boxes: the PIL path distill.py used
    before the store (decode the file, crop and resize it: what each loader process did per image), and the store
    path (gather from the memory-mapped store; render on `device`, batched). Median of 3 rounds."""
    boxes, flips = views.draw_views(images.image_sizes, 1, torch.Generator().manual_seed(0))
    boxes, flips, idx = boxes[:n, 0], flips[:n, 0], torch.arange(min(n, len(images.paths)))
    rounds = {"pil": [], "gather": [], "render": []}
    for _ in range(3):
        c0 = time.process_time()
        for i in idx.tolist():
            with Image.open(images.root / images.paths[i]) as im:
                views.make_crop(im.convert("RGB"), boxes[i].tolist(), bool(flips[i]), resolution, mean, std)
        rounds["pil"].append(time.process_time() - c0)
        c0 = time.process_time()
        for j in range(0, len(idx), batch_size):
            torch.from_numpy(images.store[images.store_rows[idx[j:j + batch_size]].numpy()])
        rounds["gather"].append(time.process_time() - c0)
        sync(device)
        c0 = time.process_time()
        for j in range(0, len(idx), batch_size):
            views.render_views(images, idx[j:j + batch_size], boxes[j:j + batch_size], flips[j:j + batch_size],
                               resolution, mean, std, device)
        sync(device)
        rounds["render"].append(time.process_time() - c0)
    return {k: 1000 * statistics.median(v) / len(idx) for k, v in rounds.items()}


TRAIN_VARIANTS = (  # bench.py train: (label, channels_last, torch.compile backend, fused AdamW)
    ("eager, AdamW looping over parameters", False, None, False),  # the baseline: torch's default on a CPU
    ("eager", False, None, True),  # distill.py's default step
    ("channels_last", True, None, True))  # distill.py --channels-last


def bench_train(args, device, variants):
    """`bench.py train`: images/s of one training step with the teacher cache, with the teacher online (--no-cache)
    and of the student alone (no teacher), at the teacher's resolution, for each variant (label, channels_last,
    torch.compile backend or None, fused AdamW); the data path (PIL per image against the image store + batched
    crops); the one-time store build and the teacher-cache build on 512 px PNGs.
    `args`: bench.py's Args (teacher, students/student, batch_size, warmup, runs, workers). Returns (table, record)."""
    name, B = (args.student or args.students)[0], args.batch_size
    if device.type == "cuda":  # as distill.py runs: TF32 for the fp32 work (the cache build)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        write_smooth_pngs(tmp, 4 * B)
        t0 = time.perf_counter()
        images = views.load_images(tmp, workers=args.workers)  # decodes every image once into the store
        store_s_per_1000 = 1000 * (time.perf_counter() - t0) / len(images.paths)
        teacher = models.load_teacher(args.teacher, None, device=device)  # random weights do for timing
        weights = "the folder's weights" if args.teacher.startswith("local-dir:") else "random weights"
        S = teacher.image_size
        data_ms = time_data_path(images, S, teacher.mean, teacher.std, device, B)
        run = distill.Args(views=1, batch_size=B, workers=args.workers)
        sync(device)
        t0 = time.perf_counter()
        cache = views.build_cache(Path(tmp) / "cache" / "bench.pt", {}, images, teacher, run,
                                  devices.Dist(device=device), device)
        sync(device)
        cache_rate = len(images.paths) / (time.perf_counter() - t0)
        idx, view, boxes, flips = next(views.step_batches(functools.partial(
            views.epoch_views, seed=0, train_idx=torch.arange(4 * B), cache=cache, image_sizes=images.image_sizes,
            scale=run.crop_scale), 0, 1, 4, B, devices.Dist()))

        def render():
            return views.render_views(images, idx, boxes, flips, S, teacher.mean, teacher.std, device)
        steps = {label: time_train_step(name, teacher, (render, idx, view, cache["emb"]), device, args.warmup,
                                        args.runs, channels_last, backend, fused)
                 for label, channels_last, backend, fused in variants}
    dtype = devices.autocast_dtype(device)
    rows = [f"| {label} | {m} | {r:.2f} | {1000 * B / r:.0f} | {r / s['img_per_s'][TRAIN_MODES[0]]:.2f} | "
            f"{s['cpu_ms_per_img'][m]:.0f} |" for label, s in steps.items() for m, r in s["img_per_s"].items()]
    cores = os.cpu_count() or 1
    data_rows = [
        f"| PIL: decode the PNG, crop + resize (each loader process, per image) | {data_ms['pil']:.2f} | 1.0x | "
        f"{cores * 1000 / data_ms['pil']:.0f} |",
        f"| store: gather from the memory-mapped store (the CPU's part when crops render on a GPU) | "
        f"{data_ms['gather']:.3f} | {data_ms['pil'] / data_ms['gather']:.0f}x | "
        f"{1000 / data_ms['gather']:.0f} (one process) |",
        f"| store: gather + render_views on {device.type} (batched roi_align) | {data_ms['render']:.2f} | "
        f"{data_ms['pil'] / data_ms['render']:.1f}x | {'n/a' if device.type == 'cuda' else 'the training device'} |"]
    table = "\n".join([
        f"training step: {name} <- {args.teacher} ({weights}), {S} px, batch {B}, {dtype}; crops rendered from "
        f"the image store in the step (no loader processes)", "",
        "| variant | step | img/s | ms/step | x student only | CPU ms/img |", "|---|---|---|---|---|---|", *rows, "",
        f"data path, 512 px PNG -> {S} px crop, on this machine ({cores} cores):", "",
        f"| path | CPU ms/img | less CPU than PIL | img/s ceiling with all {cores} cores |", "|---|---|---|---|",
        *data_rows, "",
        f"one-time costs: image store build {store_s_per_1000:.1f} s per 1,000 images with {args.workers} workers "
        f"(one epoch of the PIL loader: {data_ms['pil']:.1f} s per 1,000 images per process) | teacher cache build "
        f"{cache_rate:.1f} img/s"])
    record = {"student": name, "teacher": args.teacher, "image_size": S, "batch_size": B, "dtype": dtype,
              "variants": steps, "cache_build_img_per_s": cache_rate, "data_path_cpu_ms_per_img": data_ms,
              "store_build_s_per_1000": store_s_per_1000, "workers": args.workers}
    return table, record


# ----------------------------------------------------------------------------------------------
# the image store's resolution R: memory per dataset against the fidelity of small crops

PAPER_IMAGES = {d: len(domains.CLASSNAMES[d]) for d in domains.DATASETS}  # classes per dataset, 265 images each


def write_natural_pngs(folder, n, size=512, seed=0):
    """n size x size PNGs of 1/f noise: the power spectrum of natural photos (detail at every scale), so small crops
    show what a lower store resolution loses; smooth test images would hide it."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size).abs()
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt().clamp(min=1 / size)
    for i in range(n):
        spectrum = torch.fft.fft2(torch.randn(3, size, size, generator=gen)) / radius  # amplitude ~ 1/f
        img = torch.fft.ifft2(spectrum).real
        img = (img - img.mean()) / (4 * img.std()) + 0.5
        TF.to_pil_image(img.clamp(0, 1)).save(Path(folder) / f"{i:05d}.png")


def bench_store(args, device, resolutions=(224, 256, 288, 384), scales=((0.08, 0.1), (0.2, 0.3), (0.9, 1.0)),
                n_images=16, size=512):
    """`bench.py store`: how far crops rendered from a store at R drift from crops of the full 512 px images (PSNR,
    dB, per crop-area range), and what a store at R costs per dataset (265 images per class, uint8)."""
    out = 224
    psnr = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_natural_pngs(tmp, n_images, size)
        full = views.load_images(tmp, store_size=size)
        for lo, hi in scales:
            boxes, flips = views.draw_views(full.image_sizes, 4, torch.Generator().manual_seed(1), (lo, hi))
            idx = torch.arange(len(full.paths)).repeat_interleave(4)
            boxes, flips = boxes.view(-1, 4), flips.view(-1)
            ref = views.render_views(full, idx, boxes, flips, out, (0, 0, 0), (1, 1, 1), device)
            for r in resolutions:
                shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)  # one store at a time
                crops = views.render_views(views.load_images(tmp, store_size=r), idx, boxes, flips, out, (0, 0, 0),
                                           (1, 1, 1), device)
                mse = ((crops - ref) ** 2).mean(dim=(1, 2, 3))  # (n,), pixels in [0, 1]
                psnr[(r, lo, hi)] = float((10 * torch.log10(1 / mse)).median())
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)
            full = views.load_images(tmp, store_size=size)
    rows = [f"| {r} | " + " | ".join(f"{psnr[(r, lo, hi)]:.1f}" for lo, hi in scales) + " | " +
            " | ".join(f"{265 * c * r * r * 3 / 1e9:.1f}" for c in PAPER_IMAGES.values()) + " |"
            for r in resolutions]
    table = "\n".join([
        f"image store resolution R: {out} px crops rendered from the store against crops of the {size} px originals "
        f"(median PSNR in dB over {4 * n_images} crops of {n_images} images with a natural 1/f spectrum; higher is "
        f"closer), and the "
        f"store's size in GB (10^9 bytes, as every page gives it) at 265 images per class", "",
        "| R | " + " | ".join(f"PSNR, crop area {lo:g}-{hi:g}" for lo, hi in scales) + " | " +
        " | ".join(f"GB {d} ({265 * c:,} img)" for d, c in PAPER_IMAGES.items()) + " |",
        "|---|" + "---|" * (len(scales) + len(PAPER_IMAGES)), *rows])
    return table, {"psnr_db": {f"R{r} area {lo}-{hi}": v for (r, lo, hi), v in psnr.items()},
                   "gb_per_dataset": {f"R{r} {d}": 265 * c * r * r * 3 / 1e9 for r in resolutions
                                       for d, c in PAPER_IMAGES.items()}}
