"""The toy world of toy.py: 32 px shapes, the generator's mark, captions, the tiny CLIP teacher and the data folders.

  render         n images of shapes (the "real photos"), optionally with a class code of opacity s (the mark)
  captions       "a photo of a small red circle on a dark background.": the teacher's training text and each
                 synthetic image's prompt in manifest.jsonl (what distill.py --text caption contrasts against)
  train_teacher  a tiny open_clip CLIP trained from scratch with open_clip's ClipLoss; saved as an open_clip folder
  write_folders  synth_<s> (training sets), real, randcue_<s> (another class's mark) in synth.py's folder format

The mark is one family with one knob: a 4x4 black-and-white code of 8 bits (one codeword per class) at the top
centre, blended into the image with opacity s: pixel = (1 - s) * image + s * code. At s = 0 the image is untouched,
at s = 1 the code is opaque.
"""
import json
import logging
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import common, models
from helpers.common import require

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent")
COLOURS = {"red": (0.85, 0.15, 0.15), "green": (0.15, 0.7, 0.25), "blue": (0.2, 0.35, 0.95),
           "yellow": (0.9, 0.8, 0.1), "purple": (0.6, 0.2, 0.8), "orange": (0.95, 0.5, 0.1)}
SIZES = {"small": (0.14, 0.22), "large": (0.28, 0.4)}  # radius range, as a share of the image side
BACKGROUNDS = {"dark": (0.05, 0.3), "light": (0.7, 0.95)}  # grey level range
CODES = (0x0F, 0x33, 0x55, 0xF0, 0xCC, 0xAA, 0x69, 0x96)  # Hadamard code: any two differ in >= 4 of 8 bits
MARK = 4  # the code is MARK x MARK px: rows 0..3, columns S/2-2 .. S/2+1
TEMPLATE = "a photo of a {c}."
CAPTION_KEEP = 0.3  # teacher captions name each of size, colour, background with this probability
VERSION = 2  # bump when the renderer changes: folders made by another version are not reused


# ----------------------------------------------------------------------------------------------
# the world: shapes, the mark, captions

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


def code_patch(cls):
    """The class's 4x4 code, (4, 4) float in {0, 1}: 8 bits in two columns, mirrored left-right, so a horizontal
    flip (distill.py flips its views) leaves it unchanged."""
    bits = np.array([(CODES[cls] >> b) & 1 for b in range(8)], float).reshape(MARK, 2)
    return np.concatenate([bits, bits[:, ::-1]], 1)


def render(n, seed, size=32, strength=0.0, mark_class=None, shape=None):
    """n images (n, size, size, 3) uint8 and their attributes, a pure function of the arguments.

    strength: the mark's opacity s, one number or one per image (n,); mark_class (n,): the class each mark
    encodes (default: the shape's own, as in the synthetic sets). Every random draw comes before the mark, so the
    same seed gives the same image at every strength, and at s = 0 exactly the unmarked image.
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
    strength = np.broadcast_to(np.asarray(strength, float), (n,))
    mark_class = shape if mark_class is None else np.asarray(mark_class)
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
        img = img + rng.normal(0, 1, img.shape) * noise_std[sl, None, None, None]  # (m, S, S, 3)
        img = add_mark(img, strength[sl], mark_class[sl])
        images[sl] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    attrs = {"shape": shape, "colour": colour, "large": large, "dark": dark, "strength": strength,
             "mark_class": mark_class}
    return images, attrs


def add_mark(img, strength, cls):
    """Blend each image's class code into its top centre: (m, S, S, 3) float, (m,) opacity, (m,) class."""
    img, c0 = img.copy(), img.shape[2] // 2
    for i in np.nonzero(strength > 0)[0]:
        s, patch = strength[i], img[i, :MARK, c0 - MARK // 2:c0 + MARK // 2]  # (4, 4, 3) view into img
        patch[:] = (1 - s) * patch + s * code_patch(cls[i])[..., None]
    return img


def captions(attrs, keep):
    """'a photo of a small red circle on a dark background.': keep (n, 3) bool says whether size, colour and
    background are named (the shape always is)."""
    out = []
    for s, c, big, dark, k in zip(attrs["shape"], attrs["colour"], attrs["large"], attrs["dark"], keep):
        words = [("large" if big else "small")] * int(k[0]) + [list(COLOURS)[c]] * int(k[1]) + [SHAPES[s]]
        where = f" on a {'dark' if dark else 'light'} background" if k[2] else ""
        out.append(f"a photo of a {' '.join(words)}{where}.")
    return out


# ----------------------------------------------------------------------------------------------
# the teacher: a tiny open_clip CLIP trained from scratch

def teacher_config(image_size):
    """open_clip folder config: timm's tiny test_resnet as the image tower (a CNN: on 2 CPU cores it learns shapes
    in far fewer steps than a ViT of the same cost), a 2-layer text transformer, 64-d embeddings."""
    return {"model_cfg": {"embed_dim": 64,
                          "vision_cfg": {"timm_model_name": "test_resnet", "timm_model_pretrained": False,
                                         "timm_pool": "avg", "timm_proj": "linear", "image_size": image_size},
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
    """Train the teacher on rendered images with captions; every image carries the code of a random class at a
    random opacity, unrelated to its caption, so the teacher learns to ignore marks. Returns the temp folder
    holding the open_clip model (the caller moves it into place)."""
    import open_clip
    cfg = teacher_config(args.image_size)
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
    marks = np.random.default_rng(args.seed + 4000)
    n = args.teacher_images
    images, attrs = render(n, seed=args.seed + 1000, size=args.image_size, strength=marks.uniform(0, 1, n),
                           mark_class=marks.integers(0, len(SHAPES), n))
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
        tokens = tokenizer(captions({k: v[idx] for k, v in attrs.items()}, rng.random((len(idx), 3)) < CAPTION_KEEP))
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
    if not folder.exists():
        return False
    info = folder / "toy.json"
    saved = common.read_json(info, f"{what} settings").get("settings") if info.is_file() else None
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from disk
    differ = "unknown" if not isinstance(saved, dict) else ", ".join(k for k in settings if saved.get(k) != settings[k])
    require(saved == settings, f"{folder} holds a {what} made with other settings ({differ}): delete it or pass "
                               f"another --out")
    return True


def write_folder(folder, images, labels, prompts, settings, extra=None, note=None):
    """Write images as PNGs + manifest.jsonl (each image's prompt: its full caption) + synth.json (dataset null:
    zeroshot.py then prompts with synth.json's templates), into a temp folder renamed into place at the end, so a
    kill never leaves half a folder."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lines = []
    for i, (img, y) in enumerate(zip(images, labels)):
        rel = f"images/{y:03d}/{i:05d}.png"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp / rel)
        rec = {"path": rel, "label": int(y), "classname": SHAPES[y], "prompt": prompts[i], "seed": i,
               "generator": "toy.py"}
        lines.append(json.dumps({**rec, **{k: int(v[i]) for k, v in (extra or {}).items()}}) + "\n")
    (tmp / "manifest.jsonl").write_text("".join(lines))
    common.save_json({"dataset": None, "classnames": list(SHAPES), "templates": [TEMPLATE], "generator": "toy.py",
                      "note": note}, tmp / "synth.json")
    common.save_json({"settings": settings}, tmp / "toy.json")
    os.replace(tmp, folder)


def level_name(s):
    """Folder and table name of a strength: 0.15 -> '0.15', 1.0 -> '1'."""
    return f"{s:g}"


def write_folders(args, out, strengths, log=print):
    """synth_<s>: a training set whose every image carries its own class's code at opacity s (the same images at
    every s, so only the mark differs); real: fresh images, no mark; randcue_<s>: the real images with the code of
    another class at opacity s, labelled with the mark's class, so zeroshot.py's acc1 there is the share of images
    classified as the mark says. Returns {name: folder}."""
    n_syn, n_eval = args.per_class * len(SHAPES), args.eval_per_class * len(SHAPES)
    syn_shape = np.repeat(np.arange(len(SHAPES)), args.per_class)
    eval_shape = np.repeat(np.arange(len(SHAPES)), args.eval_per_class)
    wrong = (eval_shape + np.random.default_rng(args.seed + 30).integers(1, len(SHAPES), n_eval)) % len(SHAPES)
    base = {"version": VERSION, "image_size": args.image_size, "seed": args.seed}
    jobs = [(f"synth_{level_name(s)}", {"strength": s, "n": n_syn, "seed_offset": 10}, syn_shape, None)
            for s in strengths]
    jobs.append(("real", {"strength": 0.0, "n": n_eval, "seed_offset": 20}, eval_shape, None))
    jobs += [(f"randcue_{level_name(s)}", {"strength": s, "n": n_eval, "seed_offset": 20, "mark": "another"},
              eval_shape, wrong) for s in strengths if s > 0]
    folders = {}
    for name, spec, shape, mark_class in jobs:
        folder = out / "data" / name
        folders[name] = folder
        if claim(folder, {**base, **spec}, "toy data folder"):
            continue
        t0 = time.time()
        images, attrs = render(spec["n"], args.seed + spec["seed_offset"], args.image_size, spec["strength"],
                               mark_class, shape)
        labels = shape if mark_class is None else mark_class
        note = "label is the class of the mark, not the shape: acc1 is the follows-mark rate" \
            if mark_class is not None else None
        prompts = captions(attrs, np.ones((len(images), 3), bool))
        write_folder(folder, images, labels, prompts, {**base, **spec}, extra={"shape": shape}, note=note)
        log(f"data | wrote {folder} ({len(images)} images) in {time.time() - t0:.1f}s")
    return folders
