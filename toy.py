"""The paper's mechanism in a toy world, for real, on a laptop CPU: sweep the strength of the generator's mark.

A toy world of 32 px shapes (8 classes, random colour, size, position, rotation, light or dark background, pixel
noise) stands in for real photos (helpers/toy_world.py). A tiny CLIP teacher (open_clip, trained here from scratch on
captions such as "a photo of a small red circle on a dark background") plays the role of ViT-B-32. The synthetic
training images are the same world plus the generator's artefact: a 4x4 code of the image's class at the top centre,
blended in with opacity s. The default run sweeps s from 0 (the control) to 1 (an opaque code). At each s, students
are trained by distill.py (l2; contrastive against the class prompts at tau 0.01, CLIP's, and at tau 1, the authors'
code; mix of the two at tau 0.01) on the synthetic images only, and evaluated by zeroshot.py on held-out
synthetic images, on real images (no mark) and on real images that carry the code of another class (how often does
the student follow the mark?). Zero-shot distillation works if the student learns the shapes, not the mark.

`--study views` measures instead what distill.py's teacher cache of K fixed views per image costs against fresh
views each step (--no-cache, the authors' way): students trained with RandomResizedCrop on the unmarked set.
`--study corruptions` evaluates the sweep's L2 and contrastive tau 0.01 students at s = 0 and s = 0.3 (and the
teacher) on the real images under the 15 ImageNet-C corruptions at severities 1-5 (zeroshot.py --corruption): does
L2 hold up better under common corruptions? It reuses the sweep's students when they exist and trains them if not.

Commands:
  python toy.py                          # the default sweep (21 min on 2 CPU cores), into runs/toy
  python toy.py --quick --out /tmp/toy   # smoke run, under a minute
  python toy.py --study views            # teacher cache K = 1, 2, 8, 32 against fresh views, into runs/toy
  python toy.py --study corruptions      # s = 0 and 0.3, l2 and contrastive tau 0.01, 15 corruptions x 5 severities
  python toy.py --strengths 0 0.1 --losses l2 "contrastive tau 0.01, class" --seeds 5   # any subset
  python toy.py --strengths 0 0.3 0.4 --losses l2 "contrastive tau 0.01, class" "contrastive tau 0.01, caption" \
      "contrastive tau 1, caption" --steps 3000 --out runs/toy_captions   # captions need 3x the samples

Writes OUT/teacher (an open_clip folder: models.load_teacher('local-dir:OUT/teacher')), OUT/data/{synth_<s>, real,
randcue_<s>} (synth.py's folder format), OUT/runs/<study>/... (distill.py runs, each with toy_eval.json) and
OUT/{table.md, results.json, toy.png} (or OUT/<study>_{table.md, results.json}). A rerun reuses every piece made with
the same settings and refuses to overwrite one made with other settings.
"""
import concurrent.futures
import contextlib
import dataclasses
import importlib
import io
import multiprocessing
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F
from PIL import Image

from helpers import common, corruptions, models, toy_report, toy_world
from helpers.common import require
from helpers.toy_world import SHAPES, level_name

LOSS_FLAGS = {  # table name -> the distill.py flags of that loss
    "l2": ["--loss", "l2"],
    "contrastive tau 0.01, caption": ["--loss", "contrastive", "--temperature", "0.01", "--text", "caption"],
    "contrastive tau 0.01, class": ["--loss", "contrastive", "--temperature", "0.01", "--text", "class"],
    "contrastive tau 1, caption": ["--loss", "contrastive", "--temperature", "1", "--text", "caption"],
    "contrastive tau 1, class": ["--loss", "contrastive", "--temperature", "1", "--text", "class"],
    "mix, caption": ["--loss", "mix", "--alpha", "0.5", "--temperature", "0.01", "--text", "caption"],
    "mix, class": ["--loss", "mix", "--alpha", "0.5", "--temperature", "0.01", "--text", "class"],
}
# the default sweep: every loss against the class prompts, so that the losses differ in the loss alone. Against each
# image's caption, contrastive tau 0.01 needs about 3x the samples to converge (docs/toy.md): not in the default
DEFAULT_LOSSES = ("l2", "contrastive tau 0.01, class", "contrastive tau 1, class", "mix, class")
DEFAULT_STRENGTHS = (0, 0.2, 0.3, 0.4, 0.5, 0.6, 1)
CORRUPTION_STUDY = {"strengths": [0, 0.3], "losses": ["l2", "contrastive tau 0.01, class"]}  # the control, the band
VIEW_SETTINGS = {"1": ["--views", "1"], "2": ["--views", "2"], "8": ["--views", "8"], "32": ["--views", "32"],
                 "fresh": ["--no-cache"]}  # --study views: teacher cache of K views per image, or fresh views


@dataclass
class Args:
    """Zero-shot distillation in a toy world: at which strength of the generator's mark does the student follow it?
    Every default here is ours (the toy world is not the paper's): sized for 2 CPU cores; why, where it matters."""
    study: str = field(default="marks", metadata={"help": "marks: sweep the mark's opacity; views: K cached views "
                                                          "against fresh ones; corruptions: the s = 0 and 0.3 students "
                                                          "on corrupted real images",
                                                  "choices": ["marks", "views", "corruptions"]})
    # data
    image_size: int = field(default=32, metadata={"help": "image side in px"})
    per_class: int = field(default=1000, metadata={"help": "synthetic training images per class (and strength)"})
    eval_per_class: int = field(default=100, metadata={"help": "real and other-mark evaluation images per class"})
    strengths: List[float] = field(default_factory=lambda: list(DEFAULT_STRENGTHS), metadata={
        "help": "mark opacities s to sweep (0: the control, no mark; 1: an opaque code; --study corruptions: 0 0.3)"})
    # teacher
    teacher_images: int = field(default=20000, metadata={"help": "rendered image-caption pairs for the teacher"})
    teacher_steps: int = field(default=1200, metadata={"help": "teacher optimizer steps (ClipLoss)"})
    teacher_batch_size: int = field(default=128, metadata={"help": "teacher batch"})
    teacher_lr: float = field(default=3e-3, metadata={"help": "teacher AdamW learning rate (cosine, warm-up)"})
    # students
    student: str = field(default="test_resnet", metadata={"help": "timm model name"})
    losses: List[str] = field(default_factory=lambda: list(DEFAULT_LOSSES), metadata={
        "help": "distillation losses", "choices": list(LOSS_FLAGS)})
    views: List[str] = field(default_factory=lambda: list(VIEW_SETTINGS), metadata={
        "help": "--study views: teacher cache views per image, or fresh (--no-cache)", "choices": list(VIEW_SETTINGS)})
    corruptions: List[str] = field(default_factory=lambda: list(corruptions.NAMES), metadata={
        "help": "--study corruptions: ImageNet-C corruptions (all 15: ImageNet-C's)",
        "choices": list(corruptions.NAMES)})
    severities: List[int] = field(default_factory=lambda: list(corruptions.SEVERITIES), metadata={
        "help": "--study corruptions: severities, 1..5 (all five: ImageNet-C's)"})
    steps: int = field(default=1000, metadata={"help": "student optimizer steps per run"})
    batch_size: int = field(default=48, metadata={"help": "student batch (small: fewer images share a class prompt, "
                                                          "the contrastive loss's false negatives)"})
    lr: float = field(default=2e-2, metadata={"help": "student AdamW peak learning rate (cosine after 20 warm-up "
                                                      "steps: a short run needs a high rate and a decay)"})
    seeds: int = field(default=3, metadata={"help": "student runs per strength and loss (seeds seed..seed+n-1)"})
    holdout: float = field(default=0.1, metadata={"help": "share of synthetic images kept out of training"})
    # system
    out: str = field(default="runs/toy", metadata={"help": "output folder (reused by a rerun)"})
    seed: int = field(default=0, metadata={"help": "world, teacher and first student seed"})
    jobs: int = field(default=2, metadata={"help": "students trained at once, each in its own long-lived process"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads per student (tiny models: 1 is fastest, and "
                                                      "stays fast when other processes share the cores)"})
    quick: bool = field(default=False, metadata={"help": "smoke run: tiny counts, 1 seed, 2 strengths, 2 losses"})


# ----------------------------------------------------------------------------------------------
# students: distill.py trains them, zeroshot.py evaluates them (in long-lived worker processes)

def distill_argv(args, teacher_dir, data_dir, run_dir, flags, seed):
    """distill.py's command line for one student. The marks study uses no crops (--crop-scale 1 1): a crop would
    cut the mark out of some views and make it weaker than its s; views differ by a horizontal flip only."""
    views = ["--views", "2", "--crop-scale", "1", "1"] if args.study != "views" else []  # corruptions: the marks' runs
    return ["--channels-last", "--data", str(data_dir), "--teacher", f"local-dir:{teacher_dir}",
            "--student", args.student, "--image-size", str(args.image_size), *views, "--holdout", str(args.holdout),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--schedule",
            "cosine", "--warmup", str(min(20, args.steps // 5)), "--seed", str(seed), "--device", "cpu", "--workers",
            "0", "--log-every", str(max(1, args.steps // 4)), "--save-every", str(args.steps), "--out", str(run_dir),
            *flags]


_WORKER = {}  # per process: when it became ready, and the real images decoded once


def start_worker(t_submit, threads):
    """Pool initializer: pay the imports once per process, and record what that cost."""
    for name in ("distill", "zeroshot"):  # open_clip, timm, torchvision: the slow imports
        importlib.import_module(name)
    torch.set_num_threads(threads)
    _WORKER["start_s"] = time.time() - t_submit


def run_student(args, run_dir, argv, folders, mark, key):
    """Train (or resume, or reuse) one student with distill.main and evaluate it: (result, {stage: seconds}, worker
    start seconds or None). distill.py's printout goes to <run>/distill.log."""
    import distill
    torch.set_num_threads(args.threads)
    if (run_dir / "toy_eval.json").is_file():
        saved = common.read_json(run_dir / "toy_eval.json", "toy result", keys=("key",))
        require(saved["key"] == key, f"{run_dir} holds a run made with other settings: delete it or pass another --out")
        return saved, None, None
    if run_dir.exists() and not (run_dir / "last.pt").is_file():
        shutil.rmtree(run_dir)  # a run of ours that died before its first checkpoint: nothing to keep
    resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
    buf, t0, cpu0 = io.StringIO(), time.time(), time.process_time()
    with contextlib.redirect_stdout(buf):
        try:
            distill.main(argv + resume)
        finally:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "distill.log", "a") as f:
                f.write(buf.getvalue())
    t1 = time.time()
    result = evaluate_student(run_dir, folders, mark, key, cosine=args.study == "views")
    seconds = {"distill": t1 - t0, "evaluate": time.time() - t1, "cpu": time.process_time() - cpu0,
               "cache_built": "teacher cache: built" in buf.getvalue()}
    return result, seconds, _WORKER.pop("start_s", None)


def real_images(folder):
    """The real set's PIL images and labels, decoded once per process."""
    if str(folder) not in _WORKER:
        items, _, _ = common.load_manifest(folder)
        _WORKER[str(folder)] = [Image.open(folder / p).convert("RGB") for p, _ in items]
    return _WORKER[str(folder)]


def teacher_cosine(student, teacher, folder):
    """Mean cosine between the student's and the teacher's embedding of each real image, each model with its own
    eval transform."""
    images = real_images(folder)
    with torch.no_grad():
        s = student.encoder.encode_image(torch.stack([student.transform(im) for im in images]))  # (N, D)
        t = teacher.model.encode_image(torch.stack([teacher.preprocess(im) for im in images]))  # (N, D)
    return F.cosine_similarity(s.float(), t.float(), dim=-1).mean().item()


def evaluate_student(run_dir, folders, mark, key, cosine=False):
    """Real and other-mark accuracy by zeroshot.py (student.pt holds the class embeddings), held-out synthetic
    accuracy from distill.py's own eval_holdout.json, and with `cosine` the mean cosine to the teacher on real
    images. Saved as <run>/toy_eval.json, which marks the run as done."""
    import zeroshot
    student = zeroshot.load_model(str(run_dir / "student.pt"))
    holdout = common.read_json(run_dir / "eval_holdout.json", "distill.py's held-out result", keys=("metrics",))
    result = {"key": key, "synthetic": holdout["metrics"]["acc1"], "real": accuracy(student, folders["real"]),
              "follows_mark": accuracy(student, folders.get(f"randcue_{mark}"))}
    if cosine:
        args = common.read_json(run_dir / "args.json", "distill.py's args", keys=("teacher",))
        if args["teacher"] not in _WORKER:
            _WORKER[args["teacher"]] = models.load_teacher(args["teacher"], None)
        result["cosine"] = teacher_cosine(student, _WORKER[args["teacher"]], folders["real"])
    common.save_json(result, run_dir / "toy_eval.json")
    (run_dir / "last.pt").unlink(missing_ok=True)  # done: its resume state (weights + AdamW moments, 3 MB) can go
    return result


def accuracy(model, folder, **kw):
    """zeroshot.evaluate's top-1 accuracy on a toy folder; None for no folder (s = 0 has no other-class marks)."""
    import zeroshot
    if folder is None:
        return None
    return zeroshot.evaluate(model, str(folder), workers=0, device="cpu", progress=False, batch_size=400,
                             **kw)["metrics"]["acc1"]


def evaluate_teacher(folders, strengths, teacher):
    """The teacher on the same sets: every 10th synthetic image, real images, images with another class's mark."""
    import zeroshot
    model = zeroshot.ZeroShotModel(encoder=teacher.model, transform=teacher.preprocess, name="teacher",
                                   teacher=teacher)
    real = accuracy(model, folders["real"], teacher=teacher)
    out = {}
    for s in strengths:
        synth = folders[f"synth_{level_name(s)}"]
        items, _, _ = common.load_manifest(synth)
        out[level_name(s)] = {"synthetic": accuracy(model, synth, subset=[p for p, _ in items[::10]], teacher=teacher),
                              "real": real, "follows_mark": accuracy(model, folders.get(f"randcue_{level_name(s)}"),
                                                                     teacher=teacher)}
    return out


def plan_runs(args, out, teacher_dir, folders, teacher_settings):
    """Every student of the study: (table keys, run folder, distill argv, mark level, settings key). Ordered with
    the strength changing fastest, so the first runs build each folder's teacher cache before the others need it."""
    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        if args.study == "views":
            runs += [({"views": v, "seed": seed}, out / "runs" / "views" / f"views_{v}" / f"seed{seed}",
                      folders["synth_0"], ["--loss", "l2", *VIEW_SETTINGS[v]], "0") for v in args.views]
            continue
        for loss in args.losses:
            folder = re.sub(r"[^a-z0-9.]+", "_", loss).strip("_")  # "contrastive tau 0.01, class" -> ..._0.01_class
            runs += [({"strength": s, "loss": loss, "seed": seed},
                      out / "runs" / "marks" / f"s{level_name(s)}" / folder / f"seed{seed}",
                      folders[f"synth_{level_name(s)}"], LOSS_FLAGS[loss], level_name(s)) for s in args.strengths]
    plans = []
    for keys, run_dir, data, flags, mark in runs:
        argv = distill_argv(args, teacher_dir, data, run_dir, flags, keys["seed"])
        data_key = common.read_json(data / "toy.json", "toy data settings")
        key = common.fingerprint([distill_argv(args, "", "", "", flags, keys["seed"]), data_key, teacher_settings])
        plans.append((keys, run_dir, argv, mark, key))
    return plans


def run_all(args, plans, folders):
    """Run the students, --jobs at a time, each process single-threaded; yields (keys, result, seconds, start)."""
    jobs = [(args, run_dir, argv, folders, mark, key) for _, run_dir, argv, mark, key in plans]
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:  # tiny models: two single-threaded processes beat one two-threaded process
            pool = concurrent.futures.ProcessPoolExecutor(
                min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                initargs=(time.time(), args.threads))
            stack.callback(pool.shutdown, cancel_futures=True)  # on an error, drop the runs not yet started
            futures = {pool.submit(run_student, *job): p[0] for job, p in zip(jobs, plans)}
            for f in concurrent.futures.as_completed(futures):
                yield (futures[f], *f.result())
        else:
            start_worker(time.time(), args.threads)
            for job, p in zip(jobs, plans):
                yield (p[0], *run_student(*job))


# ----------------------------------------------------------------------------------------------
# --study corruptions: the students and the teacher on corrupted real images (zeroshot.py --corruption)

def corrupted_accuracy(run_dir, real, pairs, key):
    """{"<corruption> <severity>": top-1} of one student on the real images; kept as <run>/toy_corruptions.json,
    reused by a rerun with the same corruptions, run and library."""
    import zeroshot
    path = run_dir / "toy_corruptions.json"
    if path.is_file():
        saved = common.read_json(path, "toy corruption result", keys=("key", "acc1"))
        if saved["key"] == key:
            return saved["acc1"]
    student = zeroshot.load_model(str(run_dir / "student.pt"))
    acc1 = {f"{c} {s}": accuracy(student, real, corruption=c, severity=s) for c, s in pairs}
    common.save_json({"key": key, "acc1": acc1}, path)
    return acc1


def evaluate_corruptions(args, plans, folders, teacher):
    """The teacher first, which corrupts each (corruption, severity) set once into zeroshot.py's cache; then every
    student, --jobs at a time, reads those images. Returns ({pair: teacher top-1}, [{pair: top-1} per plan])."""
    import zeroshot
    pairs = [(c, s) for c in args.corruptions for s in args.severities]
    t0 = time.time()
    model = zeroshot.ZeroShotModel(encoder=teacher.model, transform=teacher.preprocess, name="teacher",
                                   teacher=teacher)
    teacher_acc = {f"{c} {s}": accuracy(model, folders["real"], teacher=teacher, corruption=c, severity=s)
                   for c, s in pairs}
    print(f"corruptions | teacher on {len(pairs)} corrupted sets (each corrupted once) | {time.time() - t0:.0f}s",
          flush=True)
    version = corruptions.library()[1]
    jobs = [(run_dir, folders["real"], pairs, common.fingerprint([key, pairs, version])) for _, run_dir, _, _, key
            in plans]
    t0 = time.time()
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(
                min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                initargs=(time.time(), args.threads)) as pool:
            accs = list(pool.map(corrupted_accuracy, *zip(*jobs)))
    else:
        accs = [corrupted_accuracy(*job) for job in jobs]
    print(f"corruptions | {len(jobs)} students on the cached sets | {time.time() - t0:.0f}s", flush=True)
    return teacher_acc, accs


# ----------------------------------------------------------------------------------------------

@common.entrypoint
def main(argv=None):
    args = common.parse_args(Args, argv, description=__doc__)
    if args.study == "corruptions":  # the sweep's students where the question is asked, unless others are named
        args.strengths = CORRUPTION_STUDY["strengths"] if args.strengths == list(DEFAULT_STRENGTHS) else args.strengths
        args.losses = CORRUPTION_STUDY["losses"] if args.losses == list(DEFAULT_LOSSES) else args.losses
    if args.quick:  # every stage runs, on tiny counts: a smoke test, not a measurement
        args.per_class, args.eval_per_class, args.teacher_images = 40, 16, 3000
        args.teacher_steps, args.teacher_batch_size, args.steps, args.batch_size = 300, 128, 15, 32
        args.seeds, args.jobs, args.views = 1, 1, ["1", "fresh"]
        args.strengths, args.losses = [0, 1], ["l2", "contrastive tau 0.01, caption"]
        args.corruptions, args.severities = ["gaussian_noise", "defocus_blur"], [3]
    args.strengths = sorted(set(float(s) for s in ([0] if args.study == "views" else args.strengths)))
    args.losses = [x for x in LOSS_FLAGS if x in args.losses]  # table order, no repeats
    args.views = [v for v in VIEW_SETTINGS if v in args.views]
    require(args.image_size >= 16, "--image-size must be >= 16 (the mark is 4 px tall)")
    require(all(0 <= s <= 1 for s in args.strengths), "--strengths are opacities: each in [0, 1]")
    require(min(args.per_class, args.eval_per_class, args.seeds, args.steps, args.teacher_steps) >= 1,
            "--per-class, --eval-per-class, --seeds, --steps and --teacher-steps must be >= 1")
    require(0 < args.holdout < 1 and round(args.holdout * args.per_class * len(SHAPES)) >= 1,
            "--holdout must leave at least one synthetic image out, and not all")
    require(args.threads >= 1 and args.jobs >= 1, "--threads and --jobs must be >= 1")
    common.require_numbers(args, positive=("teacher_images", "teacher_batch_size", "teacher_lr", "batch_size", "lr"))
    n_train = args.per_class * len(SHAPES) - round(args.holdout * args.per_class * len(SHAPES))  # distill.py's split
    require(args.batch_size <= n_train, f"--batch-size {args.batch_size} is larger than the {n_train} training "
                                        f"images of a run: lower it")
    require(all(s in corruptions.SEVERITIES for s in args.severities), "--severities must each be 1, 2, 3, 4 or 5")
    if args.study == "corruptions":
        require(args.image_size >= 32, "--study corruptions needs --image-size >= 32 (ImageNet-C's code refuses "
                                       "smaller images)")
        corruptions.library()  # a missing package fails now, not after the students
    torch.set_num_threads(args.threads)  # the teacher too: more threads than free cores slow tiny models down a lot
    out = common.prepare_out_dir(Path(args.out).expanduser().resolve(), create=False)  # a file: one line, now
    t_start, timing = time.time(), {}
    n_runs = args.seeds * (len(args.views) if args.study == "views" else len(args.strengths) * len(args.losses))
    print(f"toy | study {args.study} | {n_runs} students: {args.steps} steps of {args.batch_size}, {args.student} | "
          f"{args.jobs} process(es) x {args.threads} thread(s) | out {out}", flush=True)

    # 1-2: the world on disk and the teacher (made once, reused by a rerun with the same settings)
    folders = toy_world.write_folders(args, out, args.strengths)
    timing["world_s"] = time.time() - t_start
    teacher_dir = out / "teacher"
    teacher_settings = {"version": toy_world.VERSION, "config": toy_world.teacher_config(args.image_size),
                        "seed": args.seed, "keep": toy_world.CAPTION_KEEP,
                        **{k: getattr(args, k) for k in ("image_size", "teacher_images", "teacher_steps",
                                                         "teacher_batch_size", "teacher_lr")}}
    teacher_reused = toy_world.claim(teacher_dir, teacher_settings, "teacher")
    t0 = time.time()
    if not teacher_reused:
        tmp = toy_world.train_teacher(args, teacher_dir)
        common.save_json({"settings": teacher_settings}, tmp / "toy.json")
        os.replace(tmp, teacher_dir)
        print(f"teacher | trained in {time.time() - t0:.0f}s | {teacher_dir}", flush=True)
    teacher = models.load_teacher(f"local-dir:{teacher_dir}", None, device="cpu")
    teacher_results = evaluate_teacher(folders, args.strengths, teacher)
    timing["teacher_s"] = time.time() - t0
    t_real = teacher_results[level_name(args.strengths[0])]["real"]  # the same real images at every s
    print(f"teacher | zero-shot shape accuracy on real images {100 * t_real:.1f}% (chance {100 / len(SHAPES):.1f}%)",
          flush=True)
    if t_real < 0.9 and not args.quick:
        print("warning: the teacher is far from ~99%: every student result below is bounded by it; train it longer "
              "(--teacher-steps)", file=sys.stderr)

    # 3: the students, each trained by distill.py and evaluated by zeroshot.py (a rerun reuses finished runs)
    plans = plan_runs(args, out, teacher_dir, folders, teacher_settings)
    t0, runs, n_reused = time.time(), [], 0
    stages = {"worker_start_s": 0.0, "distill_s": 0.0, "evaluate_s": 0.0, "students_cpu_s": 0.0, "caches_built": 0}
    for i, (keys, result, seconds, start) in enumerate(run_all(args, plans, folders)):
        runs.append({**keys, **{k: v for k, v in result.items() if k != "key"}})
        n_reused += seconds is None
        stages["worker_start_s"] += start or 0.0
        for k, v in (seconds or {}).items():  # distill, evaluate, cpu seconds and whether it built a teacher cache
            stages[{"cpu": "students_cpu_s", "cache_built": "caches_built"}.get(k, k + "_s")] += v
        what = " | ".join(f"{k} {v}" for k, v in keys.items() if k != "seed")
        extra = f" | cosine {result['cosine']:.3f}" if "cosine" in result else \
            (f" | follows mark {100 * result['follows_mark']:5.1f}%" if result["follows_mark"] is not None else "")
        took = "reused" if seconds is None else f"{seconds['distill'] + seconds['evaluate']:.0f}s"
        print(f"[{i + 1:3d}/{len(plans)}] {what} | seed {keys['seed']} | synthetic {100 * result['synthetic']:5.1f}% "
              f"| real {100 * result['real']:5.1f}%{extra} | {took}", flush=True)
    timing.update(students_s=time.time() - t0, **stages, main_cpu_s=time.process_time())
    order = ("views", "seed") if args.study == "views" else ("strength", "loss", "seed")
    rank = {"views": args.views.index, "loss": args.losses.index, "strength": float, "seed": int}
    runs.sort(key=lambda r: [rank[k](r[k]) for k in order])

    if args.study == "corruptions":  # 3b: the students and the teacher on corrupted real images
        t0 = time.time()
        teacher_results["corrupted"], corrupted = evaluate_corruptions(args, plans, folders, teacher)
        by_keys = {tuple(p[0].items()): acc for p, acc in zip(plans, corrupted)}
        for r in runs:
            r["corrupted"] = by_keys[tuple((k, r[k]) for k in ("strength", "loss", "seed"))]
        timing["corruptions_s"] = time.time() - t0

    # 4: the table, the reading's numbers and the picture
    timing["total_s"] = seconds = time.time() - t_start
    header = (f"Toy world, study {args.study}: {args.student} students, {args.steps} steps of {args.batch_size}, "
              f"{args.seeds} seed(s), mean ± std over seeds; teacher zero-shot accuracy on real images "
              f"{100 * t_real:.1f}%; {seconds / 60:.1f} min ({args.jobs} process(es), {os.cpu_count()} cores; teacher "
              f"{'reused' if teacher_reused else 'trained'}, {n_reused} of {len(plans)} runs reused).")
    prefix = "" if args.study == "marks" else f"{args.study}_"
    if args.study == "views":
        table = toy_report.views_table(args, runs, teacher_results)
    elif args.study == "corruptions":
        table = toy_report.corruptions_table(args, runs, teacher_results)
    else:
        table = toy_report.marks_table(args, runs, teacher_results) + "\n\n" + toy_report.band(args, runs)
        toy_report.plot(args, runs, teacher_results, folders, out / "toy.png")
    print(table)
    (out / f"{prefix}table.md").write_text(header + "\n\n" + table + "\n")
    common.save_json({"args": dataclasses.asdict(args), "teacher": teacher_results, "runs": runs, "timing": timing},
                     out / f"{prefix}results.json")
    print(f"wrote {out / f'{prefix}table.md'}, {out / f'{prefix}results.json'}"
          f"{'' if prefix else ', ' + str(out / 'toy.png')} | {seconds:.0f}s | " +
          " | ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    return {"teacher": teacher_results, "runs": runs, "table": table, "out": out, "timing": timing}


if __name__ == "__main__":
    main()
