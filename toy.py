"""The paper's mechanism in a toy world, for real, on a laptop CPU in minutes (PAPER.md, issue 8).

A toy world of 32 px shapes (8 classes, random colour, size, position, rotation, light or dark background,
pixel noise) stands in for real photos. A tiny CLIP teacher (open_clip, trained here from scratch with
open_clip's ClipLoss on captions such as "a photo of a small red circle on a dark background") plays the
role of ViT-B-32. The "synthetic" training images are the same world plus a class-tied mark, the generator's
artefact, whose strength is a knob: none (control), weak (a low-contrast 2x2 colour code), medium (a faint
grating across the whole image whose angle encodes the class), strong (an opaque 4x4 black-and-white code).
Students are trained by distill.py (l2, contrastive at tau 0.01 and 1, mix) on the synthetic images only and
evaluated by zeroshot.py on held-out synthetic images, on "real" images (no mark) and on images that carry the
mark of another class (how often does the student follow the mark?).

Commands:
  python toy.py                          # the default run (about 13 min on 2 free CPU cores), into runs/toy
  python toy.py --quick --out /tmp/toy   # smoke run, well under a minute
  python toy.py --cues none strong --seeds 5 --steps 400   # any subset, more seeds, longer training

Writes OUT/teacher (an open_clip folder: load it with models.load_teacher('local-dir:OUT/teacher')),
OUT/data/{synth_<cue>,real,randcue_<cue>} (synth.py's folder format), OUT/runs/<cue>/<loss>/seed<s> (distill.py
runs, each with toy_eval.json), OUT/results.json, OUT/table.md and OUT/toy.png. A rerun reuses every piece
made with the same settings and refuses to overwrite one made with other settings.
"""
import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import common
import models
from common import require

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent")
COLOURS = {"red": (0.85, 0.15, 0.15), "green": (0.15, 0.7, 0.25), "blue": (0.2, 0.35, 0.95),
           "yellow": (0.9, 0.8, 0.1), "purple": (0.6, 0.2, 0.8), "orange": (0.95, 0.5, 0.1)}
SIZES = {"small": (0.14, 0.22), "large": (0.28, 0.4)}  # radius range, as a share of the image side
BACKGROUNDS = {"dark": (0.05, 0.3), "light": (0.7, 0.95)}  # grey level range
CUES = ("none", "weak", "medium", "strong")
STRONG_CODES = (0x0F, 0x33, 0x55, 0xF0, 0xCC, 0xAA, 0x69, 0x96)  # Hadamard code: any two differ in >= 4 of 8 bits
LOSSES = {  # table name -> distill.py flags
    "l2": ["--loss", "l2"],
    "contrastive tau 0.01": ["--loss", "contrastive", "--temperature", "0.01"],
    "contrastive tau 1": ["--loss", "contrastive", "--temperature", "1"],
    "mix": ["--loss", "mix", "--alpha", "0.5", "--temperature", "0.01"],
}
TEMPLATE = "a photo of a {c}."
CAPTION_KEEP = 0.3  # each of size, colour, background named in 30% of the captions: shape is learnt sooner
VERSION = 1  # bump when the renderer changes: folders made by another version are not reused


@dataclass
class Args:
    """Zero-shot distillation in a toy world: does the student learn the shapes or the generator's mark?"""
    # data
    image_size: int = field(default=32, metadata={"help": "image side in px"})
    per_class: int = field(default=1000, metadata={"help": "synthetic training images per class (and cue)"})
    eval_per_class: int = field(default=100, metadata={"help": "real and random-cue evaluation images per class"})
    cues: List[str] = field(default_factory=lambda: list(CUES), metadata={"help": "mark strengths to run",
                                                                          "choices": list(CUES)})
    # teacher
    teacher_images: int = field(default=20000, metadata={"help": "rendered image-caption pairs for the teacher"})
    teacher_steps: int = field(default=1200, metadata={"help": "teacher optimizer steps (ClipLoss)"})
    teacher_batch_size: int = field(default=128, metadata={"help": "teacher batch"})
    teacher_lr: float = field(default=3e-3, metadata={"help": "teacher AdamW learning rate (cosine, warm-up)"})
    # students
    student: str = field(default="test_resnet", metadata={"help": "timm model name"})
    losses: List[str] = field(default_factory=lambda: list(LOSSES), metadata={"help": "distillation losses",
                                                                              "choices": list(LOSSES)})
    steps: int = field(default=500, metadata={"help": "student optimizer steps per run"})
    batch_size: int = field(default=48, metadata={"help": "student batch (small: fewer images share a class prompt, "
                                                          "the contrastive loss's false negatives)"})
    lr: float = field(default=2e-2, metadata={"help": "student AdamW peak learning rate (cosine after 20 warm-up "
                                                      "steps: a short run needs a high rate and a decay)"})
    seeds: int = field(default=3, metadata={"help": "student runs per cue and loss (seeds seed..seed+n-1)"})
    holdout: float = field(default=0.1, metadata={"help": "share of synthetic images kept out of training"})
    # system
    out: str = field(default="runs/toy", metadata={"help": "output folder (reused by a rerun)"})
    seed: int = field(default=0, metadata={"help": "world, teacher and first student seed"})
    jobs: int = field(default=2, metadata={"help": "students trained at once, each in its own process"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (tiny models: 1 is fastest, and stays "
                                                      "fast when other processes share the cores)"})
    quick: bool = field(default=False, metadata={"help": "smoke run: tiny counts, 1 seed, cues none and strong"})


# ----------------------------------------------------------------------------------------------
# the world: shapes, captions and cues

def _inside(shape, u, v):
    """Is shape-local point (u, v) inside the shape of radius 1? (n, S, S) -> (n, S, S) bool."""
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "circle":
        return r <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8  # about the circle's area
    if shape == "triangle":  # equilateral, pointing up (v grows downwards in image rows)
        return (v <= 0.5) & (np.sqrt(3) * u - v <= 1) & (-np.sqrt(3) * u - v <= 1)
    if shape == "star":  # 5 points: the radius falls linearly from 1 at a tip to 0.42 between tips
        tri = abs(((phi + np.pi / 2) / (2 * np.pi / 5)) % 1 - 0.5) * 2  # 1 at a tip, 0 between
        return r <= 0.42 + 0.58 * tri
    if shape == "cross":
        return ((abs(u) <= 0.32) & (abs(v) <= 1)) | ((abs(v) <= 0.32) & (abs(u) <= 1))
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "diamond":
        return abs(u) / 0.75 + abs(v) <= 1.1
    if shape == "crescent":
        return (r <= 1) & (np.hypot(u - 0.5, v) >= 0.8)
    raise ValueError(shape)


def render(n, seed, size=32, cue="none", cue_class=None, shape=None):
    """n images (n, size, size, 3) uint8 and their attributes, a pure function of the arguments.

    cue: none | weak | medium | strong | random (a random strength, teacher training); cue_class (n,): the class
    each mark encodes (default: the shape's own, as in the synthetic set). Every random draw of an image comes
    before the mark, so the same seed with and without a mark differs only in the mark's pixels.
    """
    rng = np.random.default_rng([seed, VERSION])
    shape = rng.integers(0, len(SHAPES), n) if shape is None else np.asarray(shape)
    colour, large, dark = rng.integers(0, len(COLOURS), n), rng.integers(0, 2, n), rng.integers(0, 2, n)
    lo, hi = np.array([SIZES["small"], SIZES["large"]])[large].T
    radius = size * rng.uniform(lo, hi)  # (n,) px
    cx, cy = rng.uniform(radius, size - radius), rng.uniform(radius, size - radius)
    angle = np.deg2rad(rng.uniform(-20, 20, n))
    bg_lo, bg_hi = np.array([BACKGROUNDS["light"], BACKGROUNDS["dark"]])[dark].T
    bg = rng.uniform(bg_lo, bg_hi)[:, None] + rng.uniform(-0.05, 0.05, (n, 3))  # (n, 3) a slightly tinted grey
    fg = np.array(list(COLOURS.values()))[colour] + rng.uniform(-0.08, 0.08, (n, 3))  # (n, 3)
    noise_std = rng.uniform(0.01, 0.05, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    kind = rng.integers(0, len(CUES), n) if cue == "random" else np.full(n, CUES.index(cue))
    random_class = rng.integers(0, len(SHAPES), n)
    cue_class = (random_class if cue == "random" else shape) if cue_class is None else np.asarray(cue_class)
    images = np.empty((n, size, size, 3), np.uint8)
    ss = 2  # supersampling: anti-aliased edges
    grid = (np.arange(size * ss) + 0.5) / ss  # pixel centres of the fine grid
    for lo_i in range(0, n, 500):  # chunks bound the memory of the (chunk, 2S, 2S) grids
        sl = slice(lo_i, min(n, lo_i + 500))
        m = sl.stop - sl.start
        x = grid[None, None, :] - cx[sl, None, None]  # (m, 1, 2S)
        y = grid[None, :, None] - cy[sl, None, None]  # (m, 2S, 1)
        cos, sin = np.cos(angle[sl])[:, None, None], np.sin(angle[sl])[:, None, None]
        u, v = (cos * x + sin * y) / radius[sl, None, None], (-sin * x + cos * y) / radius[sl, None, None]
        inside = np.zeros((m, size * ss, size * ss), bool)
        for k, name in enumerate(SHAPES):
            sel = shape[sl] == k
            if sel.any():
                inside[sel] = _inside(name, u[sel], v[sel])
        cover = inside.reshape(m, size, ss, size, ss).mean((2, 4))[..., None]  # (m, S, S, 1) in [0, 1]
        img = bg[sl, None, None] * (1 - cover) + fg[sl, None, None] * cover
        img = img + rng.normal(0, 1, img.shape) * noise_std[sl, None, None, None]
        img = add_cue(img, kind[sl], cue_class[sl], phase[sl])
        images[sl] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    attrs = {"shape": shape, "colour": colour, "large": large, "dark": dark, "cue": kind, "cue_class": cue_class}
    return images, attrs


def add_cue(img, kind, cls, phase):
    """Draw each image's mark: (m, S, S, 3) float in [0, 1]. Every mark is symmetric under a horizontal flip (or,
    for the grating, maps to an angle no other class uses), since distill.py flips its training views."""
    img, size = img.copy(), img.shape[1]
    c0 = size // 2
    for i in np.nonzero(kind == CUES.index("weak"))[0]:  # 2x2 at the top centre, +-0.08 per channel by class bits
        bits = np.array([(cls[i] >> b) & 1 for b in range(3)])
        img[i, 0:2, c0 - 1:c0 + 1] += 0.08 * (2 * bits - 1)
    medium = np.nonzero(kind == CUES.index("medium"))[0]
    if len(medium):  # faint grating, period 4 px, angle 0..90 degrees by class
        theta = np.deg2rad(cls[medium] * 90 / (len(SHAPES) - 1))[:, None, None]
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 4 + phase[medium, None, None])
        img[medium] += 0.06 * wave[..., None]
    for i in np.nonzero(kind == CUES.index("strong"))[0]:  # opaque 4x4 code at the top centre: 8 bits, mirrored
        bits = np.array([(STRONG_CODES[cls[i]] >> b) & 1 for b in range(8)], float).reshape(4, 2)
        img[i, 0:4, c0 - 2:c0 + 2] = np.concatenate([bits, bits[:, ::-1]], 1)[..., None]
    return img


def captions(attrs, rng):
    """'a photo of a small red circle on a dark background.', each attribute but the shape named with probability
    CAPTION_KEEP, so the text encoder also learns what the bare 'a photo of a circle.' (the zero-shot prompt) means."""
    out = []
    for s, c, big, dark, keep in zip(attrs["shape"], attrs["colour"], attrs["large"], attrs["dark"],
                                     rng.random((len(attrs["shape"]), 3)) < CAPTION_KEEP):
        words = [("large" if big else "small")] * int(keep[0]) + [list(COLOURS)[c]] * int(keep[1]) + [SHAPES[s]]
        where = f" on a {'dark' if dark else 'light'} background" if keep[2] else ""
        out.append(f"a photo of a {' '.join(words)}{where}.")
    return out


# ----------------------------------------------------------------------------------------------
# the teacher: a tiny open_clip CLIP trained from scratch

def teacher_config(args):
    """open_clip folder config: timm's tiny test_resnet as the image tower (a CNN: on 2 CPU cores it learns shapes
    in far fewer steps than a ViT of the same cost), a 2-layer text transformer, 64-d embeddings."""
    return {"model_cfg": {"embed_dim": 64,
                          "vision_cfg": {"timm_model_name": "test_resnet", "timm_model_pretrained": False,
                                         "timm_pool": "avg", "timm_proj": "linear", "image_size": args.image_size},
                          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                                       "layers": 2}},
            "preprocess_cfg": {"mean": list(models.OPENAI_CLIP_MEAN), "std": list(models.OPENAI_CLIP_STD)}}


def to_tensor(images, cfg):
    """(n, S, S, 3) uint8 -> (n, 3, S, S) normalised as the teacher's own eval transform does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(cfg["preprocess_cfg"]["mean"]), torch.tensor(cfg["preprocess_cfg"]["std"])
    return (x - mean[:, None, None]) / std[:, None, None]


def shape_accuracy(model, tokenizer, x, labels):
    """Zero-shot accuracy with 'a photo of a {shape}.' on tensors (a quick check while training)."""
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([TEMPLATE.format(c=c) for c in SHAPES])), dim=-1)
        img = F.normalize(model.encode_image(x), dim=-1)
        return (img @ text.t()).argmax(-1).eq(torch.as_tensor(labels)).float().mean().item()


def train_teacher(args, folder, log=print):
    """Train the teacher on rendered images with captions and random marks (unrelated to the captions, so the
    teacher learns to ignore marks); save it as an open_clip folder."""
    import logging
    import open_clip
    cfg = teacher_config(args)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written teacher of an interrupted run
    tmp.mkdir(parents=True)
    (tmp / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    common.seed_everything(args.seed)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that the new folder has no weights (yet)
    try:
        model = open_clip.create_model("local-dir:" + str(tmp))
    finally:
        logging.getLogger().setLevel(level)
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(tmp))
    # the token table (49408 x 64: 3.2M of the model's 3.9M weights) keeps its random init: our captions use about
    # 20 words, and updating the whole table would cost as much as the rest of the step
    model.token_embedding.requires_grad_(False)
    images, attrs = render(args.teacher_images, seed=args.seed + 1000, size=args.image_size, cue="random")
    x = to_tensor(images, cfg)  # (N, 3, S, S)
    val_images, val_attrs = render(512, seed=args.seed + 2000, size=args.image_size)
    x_val = to_tensor(val_images, cfg)
    loss_fn = open_clip.ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    decay, rest = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]  # no decay: gains, biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.teacher_lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(args.seed + 3000)
    warmup, total, t0 = min(100, args.teacher_steps // 10), args.teacher_steps, time.time()
    for step in range(total):
        lr = args.teacher_lr * min((step + 1) / max(warmup, 1), 0.5 * (1 + math.cos(math.pi * step / total)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(x), args.teacher_batch_size)
        xb = x[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)  # students see flipped views too
        tokens = tokenizer(captions({k: v[idx] for k, v in attrs.items()}, rng))
        img_emb = model.encode_image(xb, normalize=True)  # (B, D)
        txt_emb = model.encode_text(tokens, normalize=True)  # (B, D)
        loss = loss_fn(img_emb, txt_emb, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's clamp
        if (step + 1) % max(1, total // 6) == 0 or step + 1 == total:
            acc = shape_accuracy(model.eval(), tokenizer, x_val, val_attrs["shape"])
            model.train()
            log(f"teacher step {step + 1:05d}/{total:05d} | loss {loss.item():.3f} | zero-shot shape acc "
                f"{100 * acc:.1f}% (512 fresh images) | {time.time() - t0:.0f}s")
    torch.save(model.state_dict(), tmp / "open_clip_pytorch_model.bin")
    return tmp


# ----------------------------------------------------------------------------------------------
# folders in synth.py's format, reused when their settings match

def claim(folder, settings, what):
    """True if folder already holds `what` made with these settings; False if it must be made. A folder made with
    other settings is never overwritten: the user decides."""
    info = folder / "toy.json"
    if not folder.exists():
        return False
    saved = json.loads(info.read_text()).get("settings") if info.is_file() else None
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from disk
    differ = "unknown" if saved is None else ", ".join(k for k in settings if saved.get(k) != settings[k])
    require(saved == settings, f"{folder} holds a {what} made with other settings ({differ}): delete it or pass "
                               f"another --out")
    return True


def write_folder(folder, images, labels, settings, extra=None, note=None):
    """Write images as PNGs + manifest.jsonl + synth.json (dataset null: zeroshot.py then prompts with synth.json's
    templates), into a temp folder renamed into place at the end, so a kill never leaves half a folder."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lines = []
    for i, (img, y) in enumerate(zip(images, labels)):
        rel = f"images/{y:03d}/{i:05d}.png"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp / rel)
        rec = {"path": rel, "label": int(y), "classname": SHAPES[y], "prompt": TEMPLATE.format(c=SHAPES[y]),
               "seed": i, "generator": "toy.py"}
        lines.append(json.dumps({**rec, **{k: int(v[i]) for k, v in (extra or {}).items()}}) + "\n")
    (tmp / "manifest.jsonl").write_text("".join(lines))
    common.save_json({"dataset": None, "classnames": list(SHAPES), "templates": [TEMPLATE], "generator": "toy.py",
                      "note": note}, tmp / "synth.json")
    common.save_json({"settings": settings}, tmp / "toy.json")
    os.replace(tmp, folder)


def write_folders(args, out, log=print):
    """synth_<cue>: the training set, every image marked with its own class (the same images for every cue, so
    only the mark differs); real: fresh images, no mark; randcue_<cue>: the real images marked with another class,
    labelled with the mark's class, so zeroshot.py's acc1 there is the follows-cue rate."""
    n_syn, n_eval = args.per_class * len(SHAPES), args.eval_per_class * len(SHAPES)
    syn_shape = np.repeat(np.arange(len(SHAPES)), args.per_class)
    eval_shape = np.repeat(np.arange(len(SHAPES)), args.eval_per_class)
    wrong = (eval_shape + np.random.default_rng(args.seed + 30).integers(1, len(SHAPES), n_eval)) % len(SHAPES)
    base = {"version": VERSION, "image_size": args.image_size, "seed": args.seed}
    jobs = [(f"synth_{c}", {"cue": c, "n": n_syn, "seed_offset": 10}, syn_shape, None) for c in args.cues]
    jobs.append(("real", {"cue": "none", "n": n_eval, "seed_offset": 20}, eval_shape, None))
    jobs += [(f"randcue_{c}", {"cue": c, "n": n_eval, "seed_offset": 20, "cue_class": "another"}, eval_shape, wrong)
             for c in args.cues if c != "none"]
    folders = {}
    for name, spec, shape, cue_class in jobs:
        folder = out / "data" / name
        folders[name] = folder
        if claim(folder, {**base, **spec}, "toy data folder"):
            continue
        t0 = time.time()
        images, _ = render(spec["n"], args.seed + spec["seed_offset"], args.image_size, spec["cue"], cue_class, shape)
        labels = shape if cue_class is None else cue_class
        note = "label is the class of the mark, not the shape: acc1 is the follows-cue rate" if cue_class is not None \
            else None
        write_folder(folder, images, labels, {**base, **spec}, extra={"shape": shape}, note=note)
        log(f"data | wrote {folder} ({len(images)} images) in {time.time() - t0:.1f}s")
    return folders


# ----------------------------------------------------------------------------------------------
# students: distill.py trains them, zeroshot.py evaluates them

def distill_argv(args, teacher_dir, data_dir, run_dir, loss, seed):
    """distill.py's command line for one student. No crops (--crop-scale 1 1): a crop would cut the marks out of
    some views and make them weaker than their name; views differ by a horizontal flip only."""
    return ["--data", str(data_dir), "--teacher", f"local-dir:{teacher_dir}", "--student", args.student,
            "--image-size", str(args.image_size), "--views", "2", "--crop-scale", "1", "1", "--holdout",
            str(args.holdout), "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--schedule", "cosine", "--warmup", str(min(20, args.steps // 5)), "--seed", str(seed), "--device", "cpu",
            "--workers", "0", "--log-every", str(args.steps), "--save-every", str(args.steps), "--out", str(run_dir),
            *LOSSES[loss]]


def distill_students(args, out, run, teacher_dir, folders, key):
    """Train (or resume, or reuse) one student with distill.main; its printout goes to <run>/distill.log."""
    import distill
    cue, loss, seed = run
    run_dir = out / "runs" / cue / loss.replace(" ", "_") / f"seed{seed}"
    argv = distill_argv(args, teacher_dir, folders[f"synth_{cue}"], run_dir, loss, seed)
    if (run_dir / "toy_eval.json").is_file():
        saved = json.loads((run_dir / "toy_eval.json").read_text())
        require(saved["key"] == key, f"{run_dir} holds a run made with other settings: delete it or pass another --out")
        return run_dir, saved
    if run_dir.exists() and not (run_dir / "last.pt").is_file():
        shutil.rmtree(run_dir)  # a run of ours that died before its first checkpoint: nothing to keep
    resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            distill.main(argv + resume)
        finally:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "distill.log", "a") as f:
                f.write(buf.getvalue())
    return run_dir, None


def run_student(args, out, teacher_dir, folders, run, data_key):
    """One student, start to end: (run, result, seconds or None when reused). A worker process's job (--jobs)."""
    torch.set_num_threads(args.threads)
    t0 = time.time()
    cue, loss, seed = run
    key = common.fingerprint([distill_argv(args, "", "", "", loss, seed), data_key])
    run_dir, result = distill_students(args, out, run, teacher_dir, folders, key)
    if result is not None:
        return run, result, None
    return run, evaluate_students(run_dir, folders, cue, key), time.time() - t0


def accuracy(model, folder, **kw):
    """zeroshot.evaluate's top-1 accuracy on a toy folder; None for no folder (the cue 'none' has no random marks)."""
    import zeroshot
    if folder is None:
        return None
    return zeroshot.evaluate(model, str(folder), workers=0, device="cpu", progress=False, batch_size=400,
                             **kw)["metrics"]["acc1"]


def evaluate_students(run_dir, folders, cue, key):
    """Real and random-mark accuracy by zeroshot.py (student.pt holds the class embeddings); held-out synthetic
    accuracy from distill.py's own eval_holdout.json. Saved as <run>/toy_eval.json, which marks the run as done."""
    model = str(run_dir / "student.pt")
    result = {"key": key, "synthetic": json.loads((run_dir / "eval_holdout.json").read_text())["metrics"]["acc1"],
              "real": accuracy(model, folders["real"]), "follows_cue": accuracy(model, folders.get(f"randcue_{cue}"))}
    common.save_json(result, run_dir / "toy_eval.json")
    (run_dir / "last.pt").unlink(missing_ok=True)  # done: its resume state (weights + AdamW moments, 3 MB) can go
    return result


def evaluate_teacher(folders, cue, teacher):
    """The teacher on the same sets: every 10th synthetic image, real images, images with another class's mark."""
    import zeroshot
    model = zeroshot.ZeroShotModel(encoder=teacher.model, transform=teacher.preprocess, name="teacher",
                                   teacher=teacher)
    items, _, _ = common.load_manifest(folders[f"synth_{cue}"])
    return {"synthetic": accuracy(model, folders[f"synth_{cue}"], subset=[p for p, _ in items[::10]], teacher=teacher),
            "real": accuracy(model, folders["real"], teacher=teacher),
            "follows_cue": accuracy(model, folders.get(f"randcue_{cue}"), teacher=teacher)}


# ----------------------------------------------------------------------------------------------
# the table and the plot

def mean_std(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def print_table(args, results, teacher_results):
    """Markdown: one row per cue and loss (mean ± std over seeds), the teacher first in each cue."""
    lines = ["| cue | loss | synthetic acc % | real acc % | follows cue % |", "|---|---|---|---|---|"]
    for cue in args.cues:
        t = teacher_results[cue]
        lines.append(f"| {cue} | teacher | {mean_std([t['synthetic']])} | {mean_std([t['real']])} | "
                     f"{mean_std([t['follows_cue']])} |")
        for loss in args.losses:
            runs = [r for r in results if r["cue"] == cue and r["loss"] == loss]
            lines.append(f"| {cue} | {loss} | {mean_std([r['synthetic'] for r in runs])} | "
                         f"{mean_std([r['real'] for r in runs])} | {mean_std([r['follows_cue'] for r in runs])} |")
    table = "\n".join(lines)
    print(table)
    return table


def plot(args, results, teacher_results, folders, path):
    """A PNG: one sample per class from each domain, and real accuracy per cue and loss (mean, std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    domains = ["real"] + [f"synth_{c}" for c in args.cues if c != "none"] + \
        [f"randcue_{c}" for c in args.cues if c == "strong"]
    fig = plt.figure(figsize=(11, 3 + 0.9 * len(domains)))
    grid = fig.add_gridspec(2, 1, height_ratios=[0.9 * len(domains), 3.2], hspace=0.25)
    top = grid[0].subgridspec(len(domains), len(SHAPES), wspace=0.05, hspace=0.05)
    for r, name in enumerate(domains):
        manifest = [json.loads(x) for x in (folders[name] / "manifest.jsonl").read_text().splitlines()]
        first = {}
        for rec in manifest:
            first.setdefault(rec["shape"], rec["path"])
        for c in range(len(SHAPES)):
            ax = fig.add_subplot(top[r, c])
            with Image.open(folders[name] / first[c]) as im:
                ax.imshow(np.asarray(im), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name.replace("randcue_", "mark of another\nclass, ").replace("synth_", "synthetic\n"),
                              fontsize=8, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(SHAPES[c], fontsize=8)
    ax = fig.add_subplot(grid[1])
    width = 0.8 / len(args.losses)
    for j, loss in enumerate(args.losses):
        real = [[100 * r["real"] for r in results if r["cue"] == cue and r["loss"] == loss] for cue in args.cues]
        x = np.arange(len(args.cues)) + (j - (len(args.losses) - 1) / 2) * width
        ax.bar(x, [np.mean(v) for v in real], width, yerr=[np.std(v) for v in real], capsize=2, label=loss)
    ax.axhline(100 * teacher_results[args.cues[0]]["real"], color="k", ls="--", lw=1, label="teacher")
    ax.axhline(100 / len(SHAPES), color="gray", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(len(args.cues)), [f"cue: {c}" for c in args.cues])
    ax.set_ylabel("zero-shot accuracy on real images (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncol=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------

@common.entrypoint
def main(argv=None):
    args = common.parse_args(Args, argv, description=__doc__)
    if args.quick:  # every stage runs, on tiny counts: a smoke test, not a measurement
        args.per_class, args.eval_per_class, args.teacher_images = 40, 16, 3000
        args.teacher_steps, args.teacher_batch_size, args.steps, args.batch_size = 300, 128, 15, 32
        args.seeds, args.cues, args.losses, args.jobs = 1, ["none", "strong"], ["l2", "contrastive tau 0.01"], 1
    args.cues = [c for c in CUES if c in args.cues]  # table order, no repeats
    args.losses = [x for x in LOSSES if x in args.losses]
    require(args.image_size >= 16, "--image-size must be >= 16 (the strong mark is 4 px tall)")
    require(min(args.per_class, args.eval_per_class, args.seeds, args.steps, args.teacher_steps) >= 1,
            "--per-class, --eval-per-class, --seeds, --steps and --teacher-steps must be >= 1")
    require(0 < args.holdout < 1 and round(args.holdout * args.per_class * len(SHAPES)) >= 1,
            "--holdout must leave at least one synthetic image out, and not all")
    require(args.threads >= 1 and args.jobs >= 1, "--threads and --jobs must be >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser().resolve()
    t_start = time.time()
    print(f"toy | {len(args.cues)} cues x {len(args.losses)} losses x {args.seeds} seeds | student {args.student} "
          f"{args.steps} steps of {args.batch_size} | device cpu, {args.threads} thread(s) | out {out}", flush=True)

    # 1-3: the world on disk, the teacher (trained once, reused by a rerun with the same settings)
    folders = write_folders(args, out)
    teacher_dir = out / "teacher"
    teacher_settings = {"version": VERSION, "config": teacher_config(args), "seed": args.seed, "keep": CAPTION_KEEP,
                        **{k: getattr(args, k) for k in ("image_size", "teacher_images", "teacher_steps",
                                                         "teacher_batch_size", "teacher_lr")}}
    teacher_reused = claim(teacher_dir, teacher_settings, "teacher")
    if not teacher_reused:
        t0 = time.time()
        tmp = train_teacher(args, teacher_dir)
        common.save_json({"settings": teacher_settings}, tmp / "toy.json")
        os.replace(tmp, teacher_dir)
        print(f"teacher | trained in {time.time() - t0:.0f}s | {teacher_dir}", flush=True)
    teacher = models.load_teacher(f"local-dir:{teacher_dir}", None, device="cpu")
    teacher_results = {cue: evaluate_teacher(folders, cue, teacher) for cue in args.cues}
    t = teacher_results[args.cues[0]]
    print(f"teacher | zero-shot shape accuracy on real images {100 * t['real']:.1f}% (chance "
          f"{100 / len(SHAPES):.1f}%)", flush=True)
    if t["real"] < 0.9 and not args.quick:
        print("warning: the teacher is far from ~99%: every student result below is bounded by it; train it longer "
              "(--teacher-steps)", file=sys.stderr)

    # 4: students, each trained by distill.py and evaluated by zeroshot.py (a rerun reuses finished runs). Runs
    # are ordered cue-minor, so the first ones build the teacher cache of each cue's folder before others need it
    runs = [(cue, loss, args.seed + s) for s in range(args.seeds) for loss in args.losses for cue in args.cues]
    data_keys = {cue: json.loads((folders[f"synth_{cue}"] / "toy.json").read_text()) for cue in args.cues}
    jobs = [(args, out, teacher_dir, folders, run, common.fingerprint([teacher_settings, data_keys[run[0]]]))
            for run in runs]
    results, n_reused = [], 0
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:  # tiny models: two single-threaded processes beat one two-threaded process
            import concurrent.futures
            import multiprocessing
            pool = concurrent.futures.ProcessPoolExecutor(min(args.jobs, len(jobs)),
                                                          mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown, cancel_futures=True)  # on an error, drop the runs not yet started
            done = concurrent.futures.as_completed([pool.submit(run_student, *job) for job in jobs])
            done = (f.result() for f in done)
        else:
            done = (run_student(*job) for job in jobs)
        for i, ((cue, loss, seed), result, seconds) in enumerate(done):
            results.append({"cue": cue, "loss": loss, "seed": seed, **{k: v for k, v in result.items() if k != "key"}})
            n_reused += seconds is None
            follows = "-" if result["follows_cue"] is None else f"{100 * result['follows_cue']:.1f}%"
            print(f"[{i + 1:2d}/{len(runs)}] cue {cue:6s} | {loss:20s} | seed {seed} | synthetic "
                  f"{100 * result['synthetic']:5.1f}% | real {100 * result['real']:5.1f}% | follows cue "
                  f"{follows:>6s} | {'reused' if seconds is None else f'{seconds:.0f}s'}", flush=True)
    results.sort(key=lambda r: (args.cues.index(r["cue"]), args.losses.index(r["loss"]), r["seed"]))

    # 5: the table and the plot
    table = print_table(args, results, teacher_results)
    seconds = time.time() - t_start
    header = (f"Toy world, {args.student} students, {args.steps} steps of {args.batch_size}, {args.seeds} seed(s); "
              f"teacher zero-shot accuracy on real images {100 * t['real']:.1f}%; {seconds / 60:.1f} min "
              f"({torch.get_num_threads()} thread(s), {os.cpu_count()} cores; teacher "
              f"{'reused' if teacher_reused else 'trained'}, {n_reused} of {len(runs)} runs reused).")
    (out / "table.md").write_text(header + "\n\n" + table + "\n")
    plot(args, results, teacher_results, folders, out / "toy.png")
    common.save_json({"args": dataclasses.asdict(args), "teacher": teacher_results,
                      "runs": results, "seconds": seconds}, out / "results.json")
    print(f"wrote {out / 'table.md'}, {out / 'toy.png'}, {out / 'results.json'} | {seconds:.0f}s")
    return {"teacher": teacher_results, "runs": results, "table": table, "out": out}


if __name__ == "__main__":
    main()
