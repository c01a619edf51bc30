"""Benchmarks, the one-call GPU check and the headline table: model size and speed, training and generation
throughput, zero-shot evaluation speed against CLIP_benchmark, and the results table with a plot.

Every sub-command prints a Markdown table a user can paste, headed by the environment (torch, device, dtype,
commit), and one JSON line last (machine-readable). Timing method: `--warmup` untimed calls, then `--runs` timed
calls (CUDA synchronised before each clock read), the median reported (helpers/bench_timing.py).

Commands:
  HF_HUB_OFFLINE=1 python bench.py gpu --out gpu_check   # one GPU, ~8 min: what a lent GPU must confirm (helpers/bench_gpu.py)
  python bench.py gpu --tiny --device cpu --out /tmp/gpu_tiny   # the same check with tiny models on a CPU
  python bench.py models --quick                  # CPU, a few minutes: params, GFLOPs, img/s, latency
  python bench.py models --device cuda --compile  # GPU: fp32 and bf16, channels_last, torch.compile
  python bench.py zeroshot --quick                # zeroshot.py vs CLIP_benchmark on the same model and data
  python bench.py train --quick                   # training step: online teacher vs cache vs student alone
  python bench.py train --device cuda --compile   # GPU: also torch.compile + channels_last
  python bench.py store                           # the image store's R: crop fidelity (PSNR) and GB per dataset
  python bench.py corruptions                     # CPU ms/image of each ImageNet-C corruption; all 15 x 5 on Pets
  python bench.py synth --generator PATH --quick  # synth.py vs a bare pipeline loop
  python bench.py onnx --quick                    # CPU: the ONNX classifier, eager vs onnxruntime fp32 vs int8
  python bench.py onnx --students efficientnet_b0 --teacher none --batches 1   # one model, batch 1: a minute
  python bench.py table results/ runs/ --plot results/headline.png   # the headline table (helpers/bench_table.py)
"""
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from helpers import bench_gpu, bench_onnx, bench_table, common, corruptions, devices, domains, eval_data, models
from helpers.bench_timing import (TRAIN_VARIANTS, bench_store, bench_train, count_flops, environment, generate,
                          import_test_kit, markdown, measure_model, save_random_teacher, sync, time_call)
from helpers.common import require

SUBCOMMANDS = ("models", "zeroshot", "train", "store", "synth", "table", "gpu", "onnx", "corruptions")
STUDENTS = ["tiny_vit_5m_224", "tiny_vit_11m_224", "tiny_vit_21m_224", "efficientnet_b0"]


@dataclass
class Args:
    """Benchmarks, the GPU check and the headline table.
    Every default here is ours (measurement settings, not the method's); the teacher and students are the paper's."""
    command: str = field(default="models", metadata={"help": "sub-command", "choices": list(SUBCOMMANDS)})
    paths: List[str] = field(default_factory=list, metadata={"help": "table: result JSONs or folders"})
    # models
    students: List[str] = field(default_factory=lambda: list(STUDENTS), metadata={"help": "timm students"})
    student: List[str] = field(default_factory=list, metadata={"help": "extra timm students to measure"})
    teacher: str = field(default="ViT-B-32", metadata={"help": "open_clip model (random weights suffice)"})
    image_size: int = field(default=224, metadata={"help": "input resolution"})
    batch_size: int = field(default=64, metadata={"help": "batch for throughput"})
    batches: List[int] = field(default_factory=lambda: [1, 32], metadata={"help": "onnx: batch sizes (ours: "
                                                                                  "one image, and a server batch)"})
    # timing
    warmup: int = field(default=3, metadata={"help": "untimed calls before timing"})
    runs: int = field(default=10, metadata={"help": "timed calls; the median is reported"})
    quick: bool = field(default=False, metadata={"help": "small settings that finish on a 2-core CPU"})
    compile: bool = field(default=False, metadata={"help": "models, train: also time torch.compile (GPU)"})
    # synth / train
    generator: Optional[str] = field(default=None, metadata={"help": "synth: diffusers pipeline (preset/id/dir)"})
    # table
    plot: Optional[str] = field(default=None, metadata={"help": "table: write a PNG plot here"})
    # gpu
    out: Optional[str] = field(default=None, metadata={"help": "gpu: folder for report.md, gpu.json and logs"})
    tiny: bool = field(default=False, metadata={"help": "gpu: tiny models (CPU), the same code paths"})
    parts: List[str] = field(default_factory=lambda: list(bench_gpu.PARTS), metadata={
        "help": f"gpu: the parts to run ({', '.join(bench_gpu.PARTS)})"})
    overwrite: bool = field(default=False, metadata={"help": "gpu: replace an existing report in --out"})
    deadline: float = field(default=540, metadata={
        "help": "gpu: seconds for the whole check; parts past it are cut (ours: a host that stops a command at 10 "
                "minutes, less a minute for start-up)"})
    # system
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    workers: int = field(default=2, metadata={"help": "data loader processes (zeroshot, train)"})


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
    import zeroshot
    kit = import_test_kit("kit")
    tmp = Path(tempfile.mkdtemp(prefix="bench_zs_"))
    n = len(kit.make_fake_dataset("pets", tmp / "data", n=64 if args.quick else 512))
    spec = save_random_teacher(args.teacher, tmp / "teacher")  # the real architecture, random weights, local-dir
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
    ours_loader = torch.utils.data.DataLoader(eval_data.SkipBroken(ds), batch_size=args.batch_size,
                                              num_workers=args.workers, collate_fn=eval_data.collate_skipping)
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
    import synth
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    spec = args.generator
    if spec is None:  # the tests' tiny random pipeline: measures synth.py's own overhead, not a real model
        spec = str(import_test_kit("kit_diffusers").make_tiny_pipeline(tmp / "tiny_sd"))
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
            generate(pipe, [prompts[c][n] for c, n in chunk], [synth.image_seed(0, c, n) for c, n in chunk], steps,
                     guidance, size)

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
# corruptions: what zeroshot.py --corruption costs before the model runs

def bench_corruptions(args, test_images=3669, cores=16):
    """CPU ms per image of each corruption and severity (--runs images of --image-size px, one process), and what
    all of them cost on Pets' test split (3,669 images) with `cores` loader processes at those rates."""
    cost, first = corruptions.time_corruptions(args.image_size, images=args.runs)
    rows = [[name, f"{first[name]:.0f}"] + [f"{cost[name][s]:.1f}" for s in corruptions.SEVERITIES] +
            [f"{sum(cost[name].values()) / len(cost[name]):.1f}"] for name in corruptions.NAMES]
    per_image = sum(sum(c.values()) for c in cost.values())  # ms for all 15 x 5 versions of one image
    cpu_s = per_image * test_images / 1000
    gb = len(corruptions.NAMES) * len(corruptions.SEVERITIES) * test_images * args.image_size ** 2 * 3 / 1e9
    rows.append([f"all {len(cost)} x {len(corruptions.SEVERITIES)}, one image", "", "", "", "", "", "",
                 f"{per_image:.0f} ms"])
    rows.append([f"all of them on Pets' {test_images:,} test images", "", "", "", "", "", "",
                 f"{cpu_s / 60:.0f} CPU-min, {cpu_s / cores / 60:.1f} min on {cores} cores, {gb:.1f} GB cached"])
    header = ["corruption", "first call ms"] + [f"severity {s} ms/img" for s in corruptions.SEVERITIES] + ["mean"]
    _, version = corruptions.library()
    note = (f"CPU time (process_time, all threads) per {args.image_size} px image, mean of {args.runs} images, "
            f"{corruptions.PACKAGE} {version}; the first call includes one-time set-up (glass blur's numba compile).")
    return markdown(header, rows) + "\n\n" + note, {"ms_per_image": cost, "first_call_ms": first,
                                                      "all_ms_per_image": per_image, "pets_cpu_s": cpu_s,
                                                      "pets_minutes_on_cores": cpu_s / cores / 60, "cores": cores,
                                                      "cache_gb": gb, "version": version}


# ----------------------------------------------------------------------------------------------
# gpu: the one-call check of a lent GPU (helpers/bench_gpu.py)

def bench_gpu_check(args, device, argv):
    require(args.out, "bench.py gpu needs --out DIR: the folder for report.md, gpu.json and the parts' logs")
    require(args.tiny or device.type == "cuda", f"bench.py gpu runs the real model sizes and needs a CUDA GPU "
                                                f"(--device {args.device} gave {device}); pass --tiny for a CPU")
    unknown = sorted(set(args.parts) - set(bench_gpu.PARTS))
    require(not unknown, f"unknown --parts {', '.join(unknown)}: choose from {', '.join(bench_gpu.PARTS)}")
    require(args.deadline > 0, f"--deadline must be a positive number of seconds, got {args.deadline:g}")
    out = common.prepare_out_dir(args.out, "--out")
    existing = [str(out / f) for f in ("report.md", "gpu.json") if (out / f).exists()]
    require(args.overwrite or not existing, f"{' and '.join(existing)} exist: pass --overwrite to replace them, "
                                            f"or another --out")
    return bench_gpu.run_check(args, device, argv)


# ----------------------------------------------------------------------------------------------

@common.entrypoint
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    require(argv and argv[0] in SUBCOMMANDS, f"give a sub-command first: {' | '.join(SUBCOMMANDS)}")
    command, rest = argv[0], argv[1:]
    positional = []
    while rest and not rest[0].startswith("-"):
        positional.append(rest.pop(0))
    args = common.parse_args(Args, ["--command", command] + rest + (["--paths"] + positional if positional else []),
                             description=__doc__)
    common.require_numbers(args, positive=("runs", "batch_size", "image_size"), non_negative=("warmup", "workers"))
    if command == "models":  # the architecture only (speed and size do not depend on the weights)
        models.resolve_teacher(args.teacher, None, weights=False)
    if args.quick:
        args.batch_size, args.warmup, args.runs = min(args.batch_size, 8), 1, 3
    device = devices.pick_device(args.device)
    if command == "models":
        table, record = bench_models(args, device)
    elif command == "zeroshot":
        table, record = bench_zeroshot(args, device)
    elif command == "table":
        table, record = bench_table.table(args.paths, args.plot)
    elif command == "train":
        variants = list(TRAIN_VARIANTS) + ([("torch.compile + channels_last", True, "inductor", True)]
                                           if args.compile else [])
        table, record = bench_train(args, device, variants)
    elif command == "store":
        table, record = bench_store(args, device)
    elif command == "gpu":
        table, record = bench_gpu_check(args, device, argv)
    elif command == "onnx":
        require(device.type == "cpu", "bench.py onnx measures CPU inference: pass --device cpu")
        table, record = bench_onnx.bench_onnx(args, device)
    elif command == "corruptions":
        table, record = bench_corruptions(args)
    else:
        table, record = bench_synth(args, device)
    head = f"{command} | {environment(device)}" + (" | --quick" if args.quick else "")
    print(f"**{head}**\n\n{table}\n")
    print(json.dumps({"command": command, "environment": environment(device), "record": record}, default=str))
    if command == "gpu" and not record["passed"]:
        failed = [f"{name} ({'; '.join(p['problems'])})" for name, p in record["parts"].items() if not p["passed"]]
        print(f"gpu check failed: {', '.join(failed)}; see {Path(args.out) / 'report.md'}", file=sys.stderr)
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
