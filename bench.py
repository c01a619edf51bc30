"""Benchmarks and the headline table: model size and speed, training and generation throughput,
zero-shot evaluation speed against CLIP_benchmark, and the results table with a plot.

Every sub-command prints a Markdown table a user can paste, headed by the environment (torch, device,
dtype, commit), and one JSON line last (machine-readable). Timing method: `--warmup` untimed calls, then
`--runs` timed calls (CUDA synchronised before each clock read), the median reported.

Commands:
  python bench.py models --quick                  # CPU, a few minutes: params, GFLOPs, img/s, latency
  python bench.py models --device cuda --compile  # GPU: fp32 and bf16, channels_last, torch.compile
  python bench.py zeroshot --quick                # zeroshot.py vs CLIP_benchmark on the same model and data
  python bench.py train --quick                   # training step: online teacher vs cache vs student alone
  python bench.py synth --generator PATH --quick  # synth.py vs a bare pipeline loop
  python bench.py table results/ runs/ --plot results/headline.png   # the headline table
"""
import functools
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torchvision.transforms.functional as TF
from PIL import Image

import common
import distill
import views
import models
import domains
from common import require

SUBCOMMANDS = ("models", "zeroshot", "train", "synth", "table")
STUDENTS = ["tiny_vit_5m_224", "tiny_vit_11m_224", "tiny_vit_21m_224", "efficientnet_b0"]

# PAPER.md: zero-shot %, real test sets. Teacher: open_clip's results (Pets/Flowers/Aircraft = mean
# per-class recall, the others top-1); the students' metric is assumed to follow the same convention.
PAPER_ROWS = {
    "paper: student L2, diverse synthetic": {"params_m": None, "pets": 87.5, "cars": 81.9, "flowers": 68.3,
                                             "food101": 71.9, "fgvc_aircraft": 24.3, "dtd": 47.4},
    "paper: student contrastive": {"params_m": None, "pets": 66.7, "cars": 64.2, "flowers": 39.1, "food101": 28.0,
                                   "fgvc_aircraft": 17.1, "dtd": 38.8},
    "paper: teacher ViT-B-32 datacomp_xl": {"params_m": 87.85, "pets": 90.02, "cars": 87.28, "flowers": 73.53,
                                           "food101": 86.32, "fgvc_aircraft": 24.63, "dtd": 57.13},
    "paper: MobileCLIP-S0": {"params_m": 11.4, "pets": 89.90, "cars": 79.34, "flowers": 67.34, "food101": 82.52,
                             "fgvc_aircraft": 20.16, "dtd": 57.50},
}
PAPER_METRIC = {"pets": "mean_per_class_recall", "flowers": "mean_per_class_recall",
                "fgvc_aircraft": "mean_per_class_recall", "cars": "acc1", "food101": "acc1", "dtd": "acc1"}
TABLE_ORDER = ["pets", "cars", "flowers", "food101", "fgvc_aircraft", "dtd"]


@dataclass
class Args:
    """Benchmarks and the headline table."""
    command: str = field(default="models", metadata={"help": "sub-command", "choices": list(SUBCOMMANDS)})
    paths: List[str] = field(default_factory=list, metadata={"help": "table: result JSONs or folders"})
    # models
    students: List[str] = field(default_factory=lambda: list(STUDENTS), metadata={"help": "timm students"})
    student: List[str] = field(default_factory=list, metadata={"help": "extra timm students to measure"})
    teacher: str = field(default="ViT-B-32", metadata={"help": "open_clip model (random weights suffice)"})
    image_size: int = field(default=224, metadata={"help": "input resolution"})
    batch_size: int = field(default=64, metadata={"help": "batch for throughput"})
    # timing
    warmup: int = field(default=3, metadata={"help": "untimed calls before timing"})
    runs: int = field(default=10, metadata={"help": "timed calls; the median is reported"})
    quick: bool = field(default=False, metadata={"help": "small settings that finish on a 2-core CPU"})
    compile: bool = field(default=False, metadata={"help": "also time torch.compile (GPU)"})
    # synth / train
    generator: Optional[str] = field(default=None, metadata={"help": "synth: diffusers pipeline (preset/id/dir)"})
    # table
    plot: Optional[str] = field(default=None, metadata={"help": "table: write a PNG plot here"})
    # system
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    workers: int = field(default=2, metadata={"help": "data loader processes (zeroshot, train)"})


# ----------------------------------------------------------------------------------------------
# timing helpers

def environment(device, dtype="fp32"):
    """One line describing where the numbers come from."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        if os.path.exists("/proc/cpuinfo"):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        name += f", {torch.get_num_threads()} threads"
    return f"torch {torch.__version__} | {device.type}: {name} | {dtype} | commit {commit}"


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


# ----------------------------------------------------------------------------------------------
# models: size and speed of the teacher's image tower and the students

def build_encoders(args, embed_dim=512):
    """name -> image encoder (random weights: speed and size do not depend on them)."""
    import open_clip
    teacher = open_clip.create_model(args.teacher, pretrained=None, force_image_size=args.image_size)
    encoders = {f"teacher {args.teacher} (image tower)": teacher.visual}
    for name in list(args.students) + list(args.student):
        encoders[name] = models.build_student(name, embed_dim, image_size=args.image_size)
    return encoders


def measure_model(model, device, dtype, batch_size, image_size, warmup, runs, channels_last=False, compile=False):
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
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"images_per_s": batch_size / t_batch, "latency_ms": 1000 * t_one, "peak_mem_mib": peak}


def bench_models(args, device):
    encoders = build_encoders(args)
    variants = [("fp32", False, False)]
    if device.type == "cuda":
        variants += [("bf16", False, False), ("bf16", True, False)] + ([("bf16", True, True)] if args.compile else [])
    rows, records = [], []
    teacher_key = next(iter(encoders))
    base = {}
    for name, model in encoders.items():
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model.cpu().eval(), torch.randn(1, 3, args.image_size, args.image_size))
        for dtype, cl, comp in variants:
            r = measure_model(model, device, dtype, args.batch_size, args.image_size, args.warmup, args.runs,
                              channels_last=cl, compile=comp)
            tag = dtype + (" channels_last" if cl else "") + (" compile" if comp else "")
            if name == teacher_key:
                base[tag] = r["images_per_s"]
            rec = {"model": name, "params": params, "gflops": flops / 1e9, "variant": tag, **r,
                   "fewer_params_pct": 100 * (1 - params / sum(p.numel() for p in encoders[teacher_key].parameters())),
                   "speedup": r["images_per_s"] / base[tag]}
            records.append(rec)
            rows.append([name, f"{params / 1e6:.2f}M", f"{rec['fewer_params_pct']:.0f}%", f"{rec['gflops']:.2f}", tag,
                         f"{r['images_per_s']:.1f}", f"{rec['speedup']:.2f}x", f"{r['latency_ms']:.1f}",
                         "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"])
    header = ["image encoder", "params", "fewer params", "GFLOPs/img", "precision",
              f"img/s (batch {args.batch_size})", "speed-up vs teacher", "latency ms (batch 1)", "peak MiB"]
    return markdown(header, rows), records


# ----------------------------------------------------------------------------------------------
# zeroshot: zeroshot.py's evaluate vs CLIP_benchmark's, same model, data and batch size

def bench_zeroshot(args, device):
    import clip_benchmark.metrics.zeroshot_classification as cb
    from clip_benchmark.datasets.builder import build_dataset
    sys.path.insert(0, str(Path(__file__).parent / "tests"))
    import kit
    import zeroshot
    tmp = Path(tempfile.mkdtemp(prefix="bench_zs_"))
    n = len(kit.make_fake_dataset("pets", tmp / "data", n=64 if args.quick else 512))
    folder = tmp / "teacher"  # the real ViT-B-32 architecture with random weights, as a local-dir teacher
    import open_clip
    cfg = open_clip.get_model_config(args.teacher)
    (folder).mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(open_clip.create_model(args.teacher).state_dict(), folder / "open_clip_pytorch_model.bin")
    spec = "local-dir:" + str(folder)
    teacher = models.load_teacher(spec, None, device=device)
    amp = device.type == "cuda"
    results = {}
    for impl in ("clip_benchmark", "zeroshot.py"):
        os.environ["XDG_CACHE_HOME"] = str(tmp / f"cache_{impl}")  # both start without a text cache
        zeroshot._CLASSIFIERS.clear()
        sync(device)
        t0 = time.perf_counter()
        if impl == "clip_benchmark":
            ds = build_dataset("pets", root=str(tmp / "data"), transform=teacher.preprocess, split="test",
                               download=False)
            loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
            clf = cb.zero_shot_classifier(teacher.model, teacher.tokenizer, ds.classes, ds.templates, device.type,
                                          amp=amp)
            logits, target = cb.run_classification(teacher.model, clf, loader, device.type, amp=amp)
            acc1 = (logits.argmax(1) == target).float().mean().item()
        else:
            zs = zeroshot.ZeroShotModel(encoder=teacher.model, transform=teacher.preprocess, name="t", teacher=teacher)
            res = zeroshot.evaluate(zs, "pets", data_root=str(tmp / "data"), templates="clip_benchmark",
                                    batch_size=args.batch_size, workers=args.workers, device=device, amp=amp,
                                    progress=False)
            acc1 = res["metrics"]["acc1"]
        sync(device)
        seconds = time.perf_counter() - t0
        results[impl] = {"seconds": seconds, "acc1": acc1}
    # the image pass alone (classifier given): CLIP_benchmark's run_classification vs zeroshot.predict
    ds = build_dataset("pets", root=str(tmp / "data"), transform=teacher.preprocess, split="test", download=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    ours_loader = torch.utils.data.DataLoader(zeroshot.SkipBroken(ds), batch_size=args.batch_size,
                                              num_workers=args.workers, collate_fn=zeroshot.collate_skipping)
    t0 = time.perf_counter()
    cb.run_classification(teacher.model, clf, loader, device.type, amp=amp)
    results["clip_benchmark (image pass only)"] = {"seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    zeroshot.predict(teacher.model, ours_loader, clf.t(), device, amp=amp, progress=False)
    results["zeroshot.py (image pass only)"] = {"seconds": time.perf_counter() - t0}
    for v in results.values():
        v["images_per_s"] = n / v["seconds"]
    ratio = results["zeroshot.py"]["images_per_s"] / results["clip_benchmark"]["images_per_s"]
    ratio_images = results["zeroshot.py (image pass only)"]["seconds"] and (
        results["clip_benchmark (image pass only)"]["seconds"] / results["zeroshot.py (image pass only)"]["seconds"])
    rows = [[k, n, f"{v['seconds']:.2f}", f"{v['images_per_s']:.1f}", f"{100 * v['acc1']:.2f}" if "acc1" in v else ""]
            for k, v in results.items()]
    rows.append(["ratio zeroshot.py / CLIP_benchmark, end to end", "", "", f"{ratio:.2f}x", ""])
    rows.append(["ratio zeroshot.py / CLIP_benchmark, image pass", "", "", f"{ratio_images:.2f}x", ""])
    table = markdown(["implementation (end to end: prompts + images)", "images", "seconds", "img/s", "acc1"], rows)
    return table, {"results": results, "ratio": ratio, "ratio_image_pass": ratio_images, "batch_size": args.batch_size,
                   "teacher": args.teacher}


# ----------------------------------------------------------------------------------------------
# synth: synth.py vs a bare loop calling the same pipeline with the same prompts and batches

def bench_synth(args, device):
    import contextlib
    import io
    import shutil
    import synth
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    spec = args.generator
    if spec is None:  # the tests' tiny random pipeline: measures synth.py's own overhead, not a real model
        sys.path.insert(0, str(Path(__file__).parent / "tests"))
        import kit_diffusers
        spec = str(kit_diffusers.make_tiny_pipeline(tmp / "tiny_sd"))
    name, source = synth.resolve_generator(spec)
    name = name if args.generator is not None else "tiny test pipeline"
    preset = synth.PRESETS.get(spec, {})
    steps = preset.get("steps", 2 if args.generator is None else 25)
    guidance = preset.get("guidance", 0.5)
    size = preset.get("size", 64 if args.generator is None else 512)
    per_class = 2 if args.quick else 8
    batch = min(args.batch_size, 8)
    pipe, _ = synth.load_generator(source, device)
    names = domains.CLASSNAMES["pets"]
    prompts = synth.make_prompts("pets", names, per_class, "diverse", 0)
    items = [(c, n) for n in range(per_class) for c in range(len(names))]

    def bare():
        for k in range(0, len(items), batch):
            chunk = items[k:k + batch]
            pipe(prompt=[prompts[c][n] for c, n in chunk], num_inference_steps=steps, guidance_scale=guidance,
                 height=size, width=size,
                 generator=[torch.Generator().manual_seed(synth.image_seed(0, c, n)) for c, n in chunk]).images

    def full():
        shutil.rmtree(tmp / "out", ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            synth.main(["--dataset", "pets", "--per-class", str(per_class), "--generator", spec, "--steps", str(steps),
                        "--guidance", str(guidance), "--size", str(size), "--batch-size", str(batch),
                        "--out", str(tmp / "out"), "--device", str(device)])
    real_load = synth.load_generator
    synth.load_generator = lambda source, device: (pipe, torch.float32)  # same loaded model: loading not timed
    try:
        t_bare = time_call(bare, device, args.warmup, args.runs)
        t_full = time_call(full, device, args.warmup, args.runs)
    finally:
        synth.load_generator = real_load
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(items)
    rows = [["bare pipeline loop", n, f"{n / t_bare:.1f}", ""],
            ["synth.py (prompts, saving, manifest)", n, f"{n / t_full:.1f}", f"{100 * (t_full / t_bare - 1):+.1f}%"]]
    table = markdown([f"{name}, {size} px, {steps} steps, batch {batch}", "images", "img/s", "time vs bare"], rows)
    return table, {"generator": name, "bare_images_per_s": n / t_bare, "synth_images_per_s": n / t_full,
                   "overhead": t_full / t_bare - 1}


# ----------------------------------------------------------------------------------------------
# table: the headline table and plot from result JSONs

def load_results(paths):
    """All zeroshot result dicts under the given files/folders (recursively)."""
    files = []
    for p in paths:
        p = Path(p)
        files += sorted(p.rglob("*.json")) if p.is_dir() else glob.glob(str(p))
    results = []
    for f in files:
        try:
            r = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(r, dict) and "metrics" in r and "dataset" in r:
            r["_file"] = str(f)
            results.append(r)
    return results


def row_key(r):
    info = r.get("model_info") or {}
    if info.get("kind") == "student":
        return f"{r['model']} ({info.get('arch')}, {info.get('loss') or '?'})"
    return r["model"]


def build_table(results):
    """rows: model -> {dataset: (paper-convention %, acc1 %, mpcr %)}, synthetic gap, params."""
    rows = {}
    for r in results:
        key = row_key(r)
        row = rows.setdefault(key, {"params_m": None, "real": {}, "synthetic": {}})
        info = r.get("model_info") or {}
        if info.get("image_params"):
            row["params_m"] = info["image_params"] / 1e6
        m = r["metrics"]
        if r.get("source", "real") == "real" and r["dataset"] in domains.DATASETS:
            row["real"][r["dataset"]] = {"paper": 100 * m[PAPER_METRIC[r["dataset"]]], "acc1": 100 * m["acc1"],
                                         "mpcr": 100 * m["mean_per_class_recall"]}
        elif r.get("source") == "synthetic":
            row["synthetic"][r["dataset"]] = 100 * m["acc1"]
    return rows


def closest_paper_row(key):
    k = key.lower()
    if "contrastive" in k:
        return "paper: student contrastive"
    if "l2" in k or "mix" in k or "student" in k or "(" in k:
        return "paper: student L2, diverse synthetic"
    return "paper: teacher ViT-B-32 datacomp_xl"


def bench_table(args):
    results = load_results(args.paths)
    require(results, f"no zeroshot result JSON found under {' '.join(args.paths) or '(no paths given)'}")
    rows = build_table(results)
    header = ["model", "params"] + [f"{d}" for d in TABLE_ORDER] + ["synthetic acc1 (gap to real)"]
    out = []
    for key, row in rows.items():
        ref = PAPER_ROWS[closest_paper_row(key)]
        cells = [key, "" if row["params_m"] is None else f"{row['params_m']:.2f}M"]
        for d in TABLE_ORDER:
            if d in row["real"]:
                v = row["real"][d]
                cells.append(f"{v['paper']:.2f} ({v['paper'] - ref[d]:+.2f}) [top-1 {v['acc1']:.1f}, "
                             f"mpcr {v['mpcr']:.1f}]")
            else:
                cells.append("")
        gaps = []
        for d, s in row["synthetic"].items():
            real = row["real"].get(d)
            gaps.append(f"{d} {s:.1f}" + (f" ({s - real['acc1']:+.1f})" if real else ""))
        cells.append("; ".join(gaps))
        out.append(cells)
    for name, ref in PAPER_ROWS.items():
        out.append([name, "" if ref["params_m"] is None else f"{ref['params_m']:.2f}M"]
                   + [f"{ref[d]:.2f}" for d in TABLE_ORDER] + [""])
    note = ("Cells: the paper's metric (mean per-class recall for Pets, Flowers, Aircraft; top-1 otherwise), "
            "(difference to the closest paper row), [top-1, mean per-class recall]. Gap: synthetic held-out top-1 "
            "(minus real top-1).")
    table = markdown(header, out) + "\n\n" + note
    if args.plot:
        plot(rows, args.plot)
    return table, {"rows": rows, "plot": args.plot}


def plot(rows, path):
    """Mean zero-shot accuracy over the datasets present, against image-encoder parameters."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, row in rows.items():
        if row["real"] and row["params_m"]:
            y = sum(v["paper"] for v in row["real"].values()) / len(row["real"])
            ax.scatter(row["params_m"], y, marker="o", s=50)
            label = f"{key} ({len(row['real'])} dataset{'s' if len(row['real']) > 1 else ''})"
            ax.annotate(label, (row["params_m"], y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    student_params = 10.55  # PAPER.md: "TinyViT-class"; plotted at TinyViT-11M's size (an assumption)
    for name, ref in PAPER_ROWS.items():
        x = ref["params_m"] or student_params
        y = sum(ref[d] for d in TABLE_ORDER) / len(TABLE_ORDER)
        ax.scatter(x, y, marker="x", s=60, color="gray")
        ax.annotate(name.replace("paper: ", "paper "), (x, y), fontsize=7, color="gray", xytext=(4, -10),
                    textcoords="offset points")
    ax.set_xscale("log")
    xs = [r["params_m"] for r in rows.values() if r["params_m"]] + [v["params_m"] or 10.55 for v in PAPER_ROWS.values()]
    ax.set_xlim(min(xs) / 2, max(xs) * 8)  # room for the labels right of the points
    ax.set_xlabel("image-encoder parameters (millions, log scale)")
    ax.set_ylabel("mean zero-shot accuracy, % (paper's metric)")
    ax.set_title("Zero-shot accuracy vs image-encoder size (o: ours, x: paper)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with common.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def bench_train(args, device):
    """`bench.py train`: images/s of one training step with the teacher cache, with the teacher online (--no-cache)
    and of the student alone (no teacher), on the same batch at the teacher's resolution; plus the cache build and
    the data loader on 512 px PNGs. `args`: bench.py's Args. Returns (Markdown table, record)."""
    name, B = (args.student or args.students)[0], args.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        gen = torch.Generator().manual_seed(0)
        for i in range(4 * B):  # smooth 512 px images, like synth.py's
            small = TF.to_pil_image(torch.rand(3, 16, 16, generator=gen))
            small.resize((512, 512), Image.BICUBIC).save(Path(tmp) / f"{i:05d}.png")
        images = views.load_images(tmp)
        teacher = models.load_teacher(args.teacher, None, device=device)  # random weights do for timing
        run = distill.Args(views=1, batch_size=B, workers=args.workers)
        t0 = time.time()
        cache = views.build_cache(Path(tmp) / "cache" / "bench.pt", {}, images, teacher, run,
                                  common.Dist(device=device), device, {})
        cache_rate = len(images.paths) / (time.time() - t0)
        plan = functools.partial(views.plan_epoch, seed=0, train_idx=torch.arange(4 * B), cache=cache,
                                 image_sizes=images.image_sizes, scale=run.crop_scale)
        loader = torch.utils.data.DataLoader(views.Views(images, [teacher.image_size], teacher.mean, teacher.std),
                                             batch_sampler=views.step_batches(plan, 0, 12, 4, B, common.Dist()),
                                             num_workers=args.workers)
        batches = iter(loader)
        (crops,), idx, view = next(batches)  # the loader's start-up is not timed
        t0 = time.time()
        loader_rate = sum(len(b[1]) for b in batches) / (time.time() - t0)
    student = models.build_student(name, teacher.embed_dim, image_size=teacher.image_size).to(device).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    x, idx, view, cache_emb = crops.to(device), idx.to(device), view.to(device), cache["emb"].to(device)
    constant = torch.randn(B, teacher.embed_dim, device=device)

    def target(mode):
        if mode == "cached (default)":
            return cache_emb[idx, view].float()
        if mode == "--no-cache (teacher online)":
            with torch.no_grad(), common.autocast(device):
                return teacher.model.encode_image(x).float()
        return constant

    seconds = {m: [] for m in ("student only (no teacher)", "cached (default)", "--no-cache (teacher online)")}
    cpu = {m: [] for m in seconds}  # CPU time of this process: the work itself, when other jobs share the cores
    modes = list(seconds)
    for r in range(args.warmup + args.runs):  # the modes take turns (in rotating order): load elsewhere hits all alike
        for mode in modes[r % 3:] + modes[:r % 3]:
            sync()
            t0, c0 = time.time(), time.process_time()
            t_emb = target(mode)
            with common.autocast(device):
                loss = distill.l2_loss(student(x).float(), t_emb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()
            if r >= args.warmup:
                seconds[mode].append(time.time() - t0)
                cpu[mode].append(time.process_time() - c0)
    rate = {m: B / statistics.median(s) for m, s in seconds.items()}
    alone = rate["student only (no teacher)"]
    cpu_ms = {m: 1000 * statistics.median(c) / B for m, c in cpu.items()}  # per image
    rows = [f"| {m} | {r:.2f} | {1000 * B / r:.0f} | {r / alone:.2f} | {cpu_ms[m]:.0f} |" for m, r in rate.items()]
    table = "\n".join([f"training step: {name} <- {args.teacher} (random weights), {teacher.image_size} px, batch {B}",
                       "", "| step | img/s | ms/step | x student only | CPU ms/img |", "|---|---|---|---|---|", *rows,
                       "",
                       f"teacher cache build: {cache_rate:.1f} img/s | data loader (512 px PNG -> crop): "
                       f"{loader_rate:.1f} img/s with {args.workers} workers "
                       f"({loader_rate / max(1, args.workers):.1f} per worker)"])
    record = {"student": name, "teacher": args.teacher, "image_size": teacher.image_size, "batch_size": B,
              "img_per_s": rate, "cpu_ms_per_img": cpu_ms,
              "cached_vs_student_only": rate["cached (default)"] / alone,
              "cached_vs_no_cache": rate["cached (default)"] / rate["--no-cache (teacher online)"],
              "cache_build_img_per_s": cache_rate, "loader_img_per_s": loader_rate, "loader_workers": args.workers}
    return table, record


# ----------------------------------------------------------------------------------------------

@common.entrypoint
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    require(argv and argv[0] in SUBCOMMANDS, f"give a sub-command first: {' | '.join(SUBCOMMANDS)}")
    command, rest = argv[0], argv[1:]
    positional = []
    while rest and not rest[0].startswith("-"):
        positional.append(rest.pop(0))
    args = common.parse_args(Args, ["--command", command] + rest + (["--paths"] + positional if positional else []))
    if args.quick:
        args.batch_size, args.warmup, args.runs = min(args.batch_size, 8), 1, 3
    device = common.pick_device(args.device)
    if command == "models":
        table, record = bench_models(args, device)
    elif command == "zeroshot":
        table, record = bench_zeroshot(args, device)
    elif command == "table":
        table, record = bench_table(args)
    elif command == "train":
        table, record = bench_train(args, device)
    else:
        table, record = bench_synth(args, device)
    head = f"{command} | {environment(device)}" + (" | --quick" if args.quick else "")
    print(f"**{head}**\n\n{table}\n")
    print(json.dumps({"command": command, "environment": environment(device), "record": record}, default=str))
    return record


if __name__ == "__main__":
    main()
