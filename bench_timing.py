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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image

import common
import distill
import models
import views

ROOT = Path(__file__).parent
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


def time_train_step(student_name, teacher, batch, device, warmup, runs, channels_last=False, compile_backend=None):
    """Seconds of the three kinds of step (TRAIN_MODES) on one batch, taking turns in rotating order so that load
    from other jobs hits all alike. batch: (crops (B, 3, S, S), image index (B,), view index (B,), cache emb)."""
    crops, idx, view, cache_emb = batch
    B = len(crops)
    torch.manual_seed(0)
    student = models.build_student(student_name, teacher.embed_dim, image_size=teacher.image_size).to(device).train()
    x = crops.to(device)
    if channels_last:
        student, x = student.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(student, backend=compile_backend) if compile_backend else student
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    idx, view, cache_emb = idx.to(device), view.to(device), cache_emb.to(device)
    constant = torch.randn(B, teacher.embed_dim, device=device)

    def target(mode):
        if mode == "cached (default)":
            return cache_emb[idx, view].float()
        if mode == "--no-cache (teacher online)":
            with torch.no_grad(), common.autocast(device):
                return teacher.model.encode_image(x).float()
        return constant

    seconds, cpu = {m: [] for m in TRAIN_MODES}, {m: [] for m in TRAIN_MODES}  # CPU: this process's own work
    first_step = None
    for r in range(max(1, warmup) + runs):  # at least one untimed round: torch.compile compiles there
        for mode in TRAIN_MODES[r % 3:] + TRAIN_MODES[:r % 3]:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            t_emb = target(mode)
            with common.autocast(device):
                loss = distill.l2_loss(forward(x).float(), t_emb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            first_step = first_step or time.perf_counter() - t0
            if r >= max(1, warmup):
                seconds[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
    rate = {m: B / statistics.median(s) for m, s in seconds.items()}
    cpu_ms = {m: 1000 * statistics.median(c) / B for m, c in cpu.items()}  # per image
    return {"img_per_s": rate, "cpu_ms_per_img": cpu_ms, "first_step_s": first_step,
            "cached_vs_student_only": rate["cached (default)"] / rate["student only (no teacher)"],
            "cached_vs_no_cache": rate["cached (default)"] / rate["--no-cache (teacher online)"]}


def bench_train(args, device, variants=(("eager", False, None),)):
    """`bench.py train`: images/s of one training step with the teacher cache, with the teacher online (--no-cache)
    and of the student alone (no teacher), on the same batch at the teacher's resolution, for each variant (label,
    channels_last, torch.compile backend or None); plus the cache build and the data loader on 512 px PNGs.
    `args`: bench.py's Args (teacher, students/student, batch_size, warmup, runs, workers).
    Returns (Markdown table, record)."""
    name, B = (args.student or args.students)[0], args.batch_size
    if device.type == "cuda":  # as distill.py runs: TF32 for the fp32 work (the cache build)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        write_smooth_pngs(tmp, 4 * B)
        images = views.load_images(tmp)
        teacher = models.load_teacher(args.teacher, None, device=device)  # random weights do for timing
        run = distill.Args(views=1, batch_size=B, workers=args.workers)
        sync(device)
        t0 = time.perf_counter()
        cache = views.build_cache(Path(tmp) / "cache" / "bench.pt", {}, images, teacher, run,
                                  common.Dist(device=device), device, {})
        sync(device)
        cache_rate = len(images.paths) / (time.perf_counter() - t0)
        plan = functools.partial(views.plan_epoch, seed=0, train_idx=torch.arange(4 * B), cache=cache,
                                 image_sizes=images.image_sizes, scale=run.crop_scale)
        loader = torch.utils.data.DataLoader(views.Views(images, [teacher.image_size], teacher.mean, teacher.std),
                                             batch_sampler=views.step_batches(plan, 0, 12, 4, B, common.Dist()),
                                             num_workers=args.workers)
        batches = iter(loader)
        (crops,), idx, view = next(batches)  # the loader's start-up is not timed
        t0 = time.perf_counter()
        loader_rate = sum(len(b[1]) for b in batches) / (time.perf_counter() - t0)
    steps = {label: time_train_step(name, teacher, (crops, idx, view, cache["emb"]), device, args.warmup, args.runs,
                                    channels_last, backend)
             for label, channels_last, backend in variants}
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    rows = [f"| {label} | {m} | {r:.2f} | {1000 * B / r:.0f} | {r / s['img_per_s'][TRAIN_MODES[0]]:.2f} | "
            f"{s['cpu_ms_per_img'][m]:.0f} |" for label, s in steps.items() for m, r in s["img_per_s"].items()]
    table = "\n".join([f"training step: {name} <- {args.teacher} (random weights), {teacher.image_size} px, batch {B},"
                       f" {dtype}", "", "| variant | step | img/s | ms/step | x student only | CPU ms/img |",
                       "|---|---|---|---|---|---|", *rows, "",
                       f"teacher cache build: {cache_rate:.1f} img/s | data loader (512 px PNG -> crop): "
                       f"{loader_rate:.1f} img/s with {args.workers} workers "
                       f"({loader_rate / max(1, args.workers):.1f} per worker)"])
    record = {"student": name, "teacher": args.teacher, "image_size": teacher.image_size, "batch_size": B,
              "dtype": dtype, "variants": steps, "cache_build_img_per_s": cache_rate,
              "loader_img_per_s": loader_rate, "loader_workers": args.workers}
    return table, record
