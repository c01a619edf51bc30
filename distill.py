"""Distil a CLIP image encoder into a small timm student on synthetic images (PAPER.md, DESIGN.md).

The teacher (open_clip, frozen) embeds K augmented views of every training image once; the embeddings
are cached next to the images (<data>/cache/<key>.pt). The student (timm encoder + nn.Linear into the
teacher's embedding space) then learns from one cached view per image per epoch, rebuilt pixel for
pixel from the cached crop box, so the teacher never runs during training. Losses: `l2` (the paper's
feature distillation), `contrastive` (the failing vision-language baseline), `mix` of the two.

Commands:
  # CPU smoke run on synth.py's smoke folder (/tmp/synth/pets) with the tests' tiny random teacher (no download)
  python -c "import sys; sys.path[:0] = ['tests', '.']; import kit; kit.make_tiny_teacher('/tmp/tiny_clip')"
  python distill.py --data /tmp/synth/pets --teacher local-dir:/tmp/tiny_clip --student test_vit --image-size 32 \
      --batch-size 16 --steps 30 --views 2 --workers 0 --device cpu --holdout 0.1 --out /tmp/runs/smoke
  # one GPU, the paper's stage 3 (96 epochs, batch 256, L2), starting from a stage-1 student
  python distill.py --loss l2 --data data/synth/pets --init runs/stage1/student.pt --eval-root data \
      --holdout 0.05 --out runs/pets_l2
  # the contrastive baseline (the authors' code used --temperature 1)
  python distill.py --loss contrastive --data data/synth/pets --out runs/pets_contrastive
  # several GPUs: --batch-size stays the global batch
  torchrun --nproc_per_node=4 distill.py --loss l2 --data data/synth/pets --out runs/pets_l2_ddp
  # continue a stopped run exactly where last.pt left off (or extend it with a larger --epochs/--steps)
  python distill.py --loss l2 --data data/synth/pets --out runs/pets_l2 --resume

Writes <out>/student.pt (self-contained, for zeroshot.py), last.pt (resume state), args.json, log.jsonl
and, with --eval-root / --holdout, eval_<dataset>.json / eval_holdout.json.
"""
import dataclasses
import functools
import io
import json
import os
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

import common
import models
import zeroshot
from common import UserError, require


@dataclass
class Args:
    """Zero-shot distillation of a CLIP image encoder into a small student (l2 | contrastive | mix)."""
    # data
    data: str = field(default="data/synth/pets", metadata={
        "help": "synth.py folder (labels from manifest.jsonl), any image folder (no labels: --loss l2 only), or "
                "webdataset shards 'shards/{00000..00099}.tar' (stage 1: streamed, teacher online, --steps)"})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "domains.py class set for the text embeddings and --eval-root (default: synth.json's dataset)"})
    views: int = field(default=8, metadata={"help": "K: augmented views per image in the teacher cache"})
    cache: bool = field(default=True, metadata={"help": "--no-cache: run the teacher online on fresh augmentations"})
    cache_seed: int = field(default=0, metadata={"help": "seed of the cached views (independent of --seed)"})
    crop_scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata={"help": "RandomResizedCrop area range"})
    image_size: int = field(default=0, metadata={"help": "student input size; 0: the teacher's resolution"})
    holdout: float = field(default=0.0, metadata={"help": "share of synthetic images kept out of training, "
                                                          "evaluated at the end (synthetic-to-real gap)"})
    eval_root: Optional[str] = field(default=None, metadata={
        "help": "torchvision data root: evaluate on --dataset's real test split at the end"})
    # model
    teacher: str = field(default="ViT-B-32", metadata={"help": "open_clip name or local-dir:PATH"})
    teacher_pretrained: Optional[str] = field(default="datacomp_xl_s13b_b90k", metadata={"help": "tag or file"})
    student: str = field(default="tiny_vit_11m_224", metadata={"help": "timm model name"})
    student_pretrained: bool = field(default=False, metadata={"help": "start the encoder from timm's weights"})
    init: Optional[str] = field(default=None, metadata={"help": "start from this student.pt / last.pt"})
    # optimization
    loss: str = field(default="l2", metadata={"help": "distillation loss", "choices": ["l2", "contrastive", "mix"]})
    alpha: float = field(default=0.5, metadata={"help": "mix: (1 - alpha) * l2 + alpha * contrastive"})
    temperature: float = field(default=0.01, metadata={"help": "contrastive tau (CLIP: 0.01; authors' code: 1)"})
    epochs: int = field(default=96, metadata={"help": "passes over the training images"})
    steps: int = field(default=0, metadata={"help": "optimizer steps; overrides --epochs when > 0"})
    batch_size: int = field(default=256, metadata={"help": "global batch (split across torchrun ranks)"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    schedule: str = field(default="constant", metadata={"help": "lr after warm-up", "choices": ["constant", "cosine"]})
    warmup: int = field(default=0, metadata={"help": "linear warm-up steps"})
    # system
    out: Optional[str] = field(default=None, metadata={"help": "run folder; None: runs/<data folder>_<loss>_<student>"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/last.pt"})
    seed: int = field(default=0, metadata={"help": "student init, data order, fresh augmentations"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda|cuda:N|mps"})
    workers: int = field(default=8, metadata={"help": "data loader processes per rank"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the student"})
    save_every: int = field(default=500, metadata={"help": "write last.pt every N steps (and at the end)"})
    log_every: int = field(default=50, metadata={"help": "one log line every N steps"})


# args that change the trajectory: --resume refuses to continue when one differs
ESSENTIAL = ("data", "dataset", "views", "cache", "cache_seed", "crop_scale", "image_size", "holdout", "teacher",
             "teacher_pretrained", "student", "student_pretrained", "init", "loss", "alpha", "temperature",
             "batch_size", "lr", "schedule", "warmup", "seed")
CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# losses: pure functions of unnormalised embeddings

def l2_loss(student_emb, teacher_emb):
    """Mean over the batch of ||s - t||_2 (not squared) between unit vectors. (B, D), (B, D) -> ()"""
    s, t = F.normalize(student_emb, dim=-1), F.normalize(teacher_emb, dim=-1)
    return (s - t).norm(dim=-1).mean()


def contrastive_loss(student_emb, class_text_emb, labels, temperature):
    """Symmetric InfoNCE between image i and the text embedding of its class; same-class images share a
    prompt and are (false) negatives of each other, as in the paper. (B, D), (C, D), (B,) -> ()"""
    s = F.normalize(student_emb, dim=-1)  # (B, D)
    u = F.normalize(class_text_emb, dim=-1)[labels]  # (B, D): one text row per image
    logits = s @ u.t() / temperature  # (B, B)
    target = torch.arange(len(s), device=s.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def mix_loss(student_emb, teacher_emb, class_text_emb, labels, temperature, alpha):
    return ((1 - alpha) * l2_loss(student_emb, teacher_emb)
            + alpha * contrastive_loss(student_emb, class_text_emb, labels, temperature))


LOSSES = {  # --loss -> f(student_emb, teacher_emb, class_text_emb, labels, temperature, alpha)
    "l2": lambda s, t, u, y, tau, alpha: l2_loss(s, t),
    "contrastive": lambda s, t, u, y, tau, alpha: contrastive_loss(s, u, y, tau),
    "mix": mix_loss,
}


# ----------------------------------------------------------------------------------------------
# data: images, views (crop box + flip) and the teacher cache

@dataclass
class ImageSet:
    root: Path
    paths: list                      # relative to root
    labels: Optional[torch.Tensor]   # (N,) class index; None for an unlabelled folder
    classnames: Optional[list]
    dataset: Optional[str]           # synth.json's domains.py name
    sizes: torch.Tensor              # (N, 2) width, height
    digest: str                      # paths, labels and file sizes: part of the cache metadata


def load_images(data):
    """The training images: a synth.py folder (labels from manifest.jsonl) or any image folder (no labels).
    Stage-1 sources (webdataset shards) plug in here."""
    root = Path(data).expanduser().resolve()
    require(root.is_dir(), f"--data {data} does not exist: pass a synth.py output folder or an image folder")
    labels = classnames = dataset = None
    if (root / "manifest.jsonl").is_file():
        items, classnames, info = common.load_manifest(root)
        paths, labels, dataset = [p for p, _ in items], torch.tensor([y for _, y in items]), info.get("dataset")
    else:
        paths = common.list_images(root)
    require(paths, f"--data {root} holds no images ({', '.join(common.IMAGE_EXTS)} files or a synth.py "
                   f"manifest.jsonl)")
    sizes, nbytes = [], []
    for p in paths:
        try:
            with Image.open(root / p) as im:
                sizes.append(im.size)
            nbytes.append((root / p).stat().st_size)
        except (OSError, ValueError) as e:
            raise UserError(f"{root / p} is missing or not a readable image ({type(e).__name__})") from None
    digest = common.fingerprint([paths, None if labels is None else labels.tolist(), nbytes])
    return ImageSet(root, paths, labels, classnames, dataset, torch.tensor(sizes), digest)


def generator(*key):
    """A torch.Generator seeded from a key: its own stream, never the global RNG."""
    return torch.Generator().manual_seed(int(common.fingerprint(list(key)), 16))


def draw_views(sizes, k, gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """k RandomResizedCrop boxes + flips per image from an explicit generator (torchvision's get_params uses the
    global RNG), vectorised, torchvision's rule: the first of `tries` (area, aspect) draws that fits, else a
    central crop. sizes (N, 2) of (width, height) -> boxes (N, k, 4) of (top, left, height, width), flips (N, k)."""
    n = len(sizes)
    W, H = sizes[:, 0].double().view(n, 1, 1), sizes[:, 1].double().view(n, 1, 1)
    area = W * H * torch.empty(n, k, tries, dtype=torch.float64).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(n, k, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                     generator=gen)
    w, h = (area * log_r.exp()).sqrt().round(), (area / log_r.exp()).sqrt().round()  # (N, k, tries)
    fits = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # index of the first fitting draw
    w, h = w.gather(-1, first)[..., 0], h.gather(-1, first)[..., 0]  # (N, k)
    W, H = W[..., 0], H[..., 0]  # (N, 1)
    central_w = torch.where(W / H > ratio[1], (H * ratio[1]).round(), W)
    central_h = torch.where(W / H < ratio[0], (W / ratio[0]).round(), H)
    ok = fits.any(-1)
    w, h = torch.where(ok, w, central_w), torch.where(ok, h, central_h)
    top = torch.where(ok, (torch.rand(n, k, dtype=torch.float64, generator=gen) * (H - h + 1)).floor(),
                      ((H - h) / 2).floor())
    left = torch.where(ok, (torch.rand(n, k, dtype=torch.float64, generator=gen) * (W - w + 1)).floor(),
                       ((W - w) / 2).floor())
    flips = torch.rand(n, k, generator=gen) < 0.5
    return torch.stack([top, left, h, w], -1).int(), flips


def make_crop(image, box, flip, size, mean, std):
    """One view of a PIL image: crop box (top, left, h, w), bicubic resize to size x size, flip, normalise."""
    top, left, h, w = box
    image = TF.resized_crop(image, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
    if flip:
        image = TF.hflip(image)
    return TF.normalize(TF.to_tensor(image), mean, std)  # (3, size, size)


class Views(torch.utils.data.Dataset):
    """Key (image, view, box, flip) -> ([crop at each of `sizes`], image, view). The box comes with the key, so a
    view's pixels depend on nothing else (not the worker, not a random stream)."""

    def __init__(self, images, sizes, mean, std):
        self.images, self.sizes, self.mean, self.std = images, sizes, mean, std
        self._last = (None, None)  # consecutive views of one image decode it once

    def __len__(self):
        return len(self.images.paths)

    def __getitem__(self, key):
        i, k, box, flip = key
        if self._last[0] != i:
            with Image.open(self.images.root / self.images.paths[i]) as im:
                self._last = (i, im.convert("RGB"))
        return [make_crop(self._last[1], box, flip, s, self.mean, self.std) for s in self.sizes], i, k


def cache_metadata(images, teacher, args):
    meta = {"version": CACHE_VERSION, "teacher": teacher.weights_key(), "views": args.views, "seed": args.cache_seed,
            "resolution": teacher.image_size, "transform": {"crop": "RandomResizedCrop", "scale": args.crop_scale,
            "ratio": [3 / 4, 4 / 3], "interpolation": "bicubic", "flip": 0.5, "mean": teacher.mean,
            "std": teacher.std}, "images": images.digest, "n": len(images.paths)}
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as they come back from disk
    name = Path(teacher.name.split(":")[-1]).name.replace("/", "_")
    key = common.fingerprint({k: v for k, v in meta.items() if k not in ("images", "n")})  # new images: same file
    return meta, images.root / "cache" / f"{name}-K{args.views}-{key}.pt"


def read_cache(path, meta):
    """The cache at path if its metadata matches this run exactly, else None (it will be rebuilt)."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file is rebuilt, never trusted
        return None
    return cache if isinstance(cache, dict) and cache.get("meta") == meta else None


def build_cache(path, meta, images, teacher, args, dist, device, text):
    """Draw K views per image from the cache's own generator, embed each once with the frozen teacher, write the
    cache atomically. Under torchrun each rank embeds every world_size-th image and rank 0 merges."""
    boxes, flips = draw_views(images.sizes, args.views, generator("cache", args.cache_seed), args.crop_scale)
    n, K = len(images.paths), args.views
    mine = list(range(dist.rank, n, dist.world_size))
    keys = [(i, k, boxes[i, k].tolist(), bool(flips[i, k])) for i in mine for k in range(K)]
    batches = [keys[j:j + args.batch_size] for j in range(0, len(keys), args.batch_size)]
    loader = torch.utils.data.DataLoader(Views(images, [teacher.image_size], teacher.mean, teacher.std),
                                         batch_sampler=batches, num_workers=args.workers,
                                         generator=generator("cache"))  # not the training run's global stream
    emb = torch.zeros(n, K, teacher.embed_dim, dtype=torch.float16)  # (N, K, D)
    with torch.no_grad():  # fp32 (TF32 on GPU): the cache is built once and read by every later run
        for (crops,), idx, view in tqdm(loader, desc="teacher cache", disable=None if dist.is_main else True):
            emb[idx, view] = teacher.model.encode_image(crops.to(device)).float().cpu().half()
    if dist.enabled:
        part = path.with_name(f"{path.name}.part{dist.rank}")
        common.save_torch({"rows": torch.tensor(mine), "emb": emb[mine]}, part)
        torch.distributed.barrier()
        if dist.is_main:
            for r in range(dist.world_size):
                p = torch.load(path.with_name(f"{path.name}.part{r}"), weights_only=True)
                emb[p["rows"]] = p["emb"]
                path.with_name(f"{path.name}.part{r}").unlink()
    if dist.is_main:
        common.save_torch({"meta": meta, "paths": images.paths, "boxes": boxes, "flips": flips, "emb": emb,
                           "text": text}, path)
    if dist.enabled:
        torch.distributed.barrier()
    return read_cache(path, meta)


def prepare_targets(images, teacher, classnames, templates, args, dist, device):
    """(teacher cache or None with --no-cache, (C, D) class text embeddings or None without a class set)."""
    cache = class_text_emb = None
    text_key = common.fingerprint([classnames, templates])
    if args.cache:
        meta, path = cache_metadata(images, teacher, args)
        cache = read_cache(path, meta)
        if dist.enabled:
            torch.distributed.barrier()  # every rank has decided before anyone rewrites the file
        class_text_emb = cache["text"].get(text_key, {}).get("emb") if cache is not None else None
    if classnames is not None and class_text_emb is None:  # zeroshot.py's classifier: unit prompt embeddings
        class_text_emb = zeroshot.build_classifier(teacher, classnames, templates, device="cpu")
    text = {text_key: {"classnames": classnames, "templates": templates, "emb": class_text_emb}} if classnames else {}
    if args.cache and cache is None:
        t0 = time.time()
        cache = build_cache(path, meta, images, teacher, args, dist, device, text)
        if dist.is_main:
            print(f"teacher cache: built {path} ({len(images.paths)} images x {args.views} views) in "
                  f"{time.time() - t0:.0f}s")
    elif args.cache:
        if dist.is_main:
            print(f"teacher cache: reusing {path}")
        if text and text_key not in cache["text"] and dist.is_main:
            cache["text"].update(text)
            common.save_torch(cache, path)
    return cache, class_text_emb


def plan_epoch(epoch, seed, train_idx, cache, sizes, scale):
    """Image order and one view per image for an epoch: a pure function of (seed, epoch), so resume and any
    number of ranks or workers see the same batches. With --no-cache the views are fresh draws."""
    gen = generator("epoch", seed, epoch)
    order = train_idx[torch.randperm(len(train_idx), generator=gen)]  # (n,)
    if cache is not None:
        view = torch.randint(cache["boxes"].shape[1], (len(order),), generator=gen)  # (n,)
        return order, view, cache["boxes"][order, view], cache["flips"][order, view]
    boxes, flips = draw_views(sizes[order], 1, gen, scale)
    return order, torch.zeros_like(order), boxes[:, 0], flips[:, 0]


def step_batches(plan, start, total, steps_per_epoch, batch_size, dist):
    """Keys of this rank's share of the global batch of each step start..total-1: a contiguous 1/world_size
    slice, so N processes together see exactly the images one process sees."""
    local, current = batch_size // dist.world_size, (None, None)
    for step in range(start, total):
        epoch, b = divmod(step, steps_per_epoch)
        if current[0] != epoch:
            current = (epoch, plan(epoch))
        order, view, boxes, flips = current[1]
        lo = b * batch_size + dist.rank * local
        yield [(int(order[j]), int(view[j]), boxes[j].tolist(), bool(flips[j])) for j in range(lo, lo + local)]


# ----------------------------------------------------------------------------------------------
# stage 1 data: webdataset shards (img2dataset's output for CC3M, CC12M, DataComp), streamed once

def is_shards(data):
    """--data names tar shards (a brace pattern, a .tar path, or a pipe: URL) rather than a folder."""
    return data.startswith("pipe:") or ".tar" in data or "{" in data


def expand_shards(pattern):
    """'shards/{00000..00099}.tar' -> the list of shard URLs; local files must exist and be tar files."""
    import tarfile
    from braceexpand import braceexpand
    urls = [u for part in pattern.split("::") for u in braceexpand(part)]  # "a.tar::b/{0..9}.tar" too
    local = [u for u in urls if not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    require(not missing or len(missing) < len(local),
            f"shard pattern {pattern} matches no file (first: {urls[0]})")
    require(not missing, f"{len(missing)} of {len(urls)} shards of {pattern} do not exist "
                         f"(first: {(missing or [''])[0]})")
    for u in local:
        require(tarfile.is_tarfile(u), f"shard {u} is not a tar file (webdataset shards are tar archives)")
    return urls


def load_shards(pattern):
    """An ImageSet standing for a shard stream: paths are the shard URLs, no labels, no sizes."""
    urls = expand_shards(pattern)
    first = urls[0] if not urls[0].startswith("pipe:") else "pipe"
    root = Path(os.path.dirname(first) or ".").resolve()
    return ImageSet(root, urls, None, None, None, torch.zeros(0, 2), common.fingerprint(urls))


def open_shard(url):
    """A file object streaming one shard: a local path, or 'pipe:CMD' (e.g. pipe:curl -s URL)."""
    import subprocess
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
        return proc.stdout
    return open(url, "rb")


def iterate_shard(url):
    """(key, {extension: bytes}) per sample: webdataset groups consecutive members by the key before the first dot."""
    import tarfile
    key, sample = None, {}
    with open_shard(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            k, _, ext = base.partition(".")
            k = os.path.join(os.path.dirname(member.name), k)
            if k != key and sample:
                yield key, sample
                sample = {}
            key = k
            sample[ext.lower()] = tar.extractfile(member).read()
    if sample:
        yield key, sample


class ShardStream(torch.utils.data.IterableDataset):
    """Every sample of the shards exactly once per pass, split across torchrun ranks and loader workers.

    Shards are dealt round-robin to the global worker ids rank * workers + worker, in an order shuffled per pass
    from the seed (the same on every rank). Each worker streams its shards and yields ([crop at each of `sizes`],
    key, (global worker id, samples it skipped so far)); a sample whose image does not decode is skipped and
    counted. The crop of a sample is seeded by (seed, key, pass), so it does not depend on rank or worker. After a
    pass a worker starts the next one, so a step-based run never runs dry; `skip` (worker -> samples) fast-forwards
    a resumed run past what its batches already consumed, and `first_worker` makes the loader's worker 0 play the
    worker whose batch comes next (a DataLoader always starts at its worker 0). `passes` limits the stream.
    """

    def __init__(self, urls, sizes, mean, std, seed, scale, rank=0, world_size=1, skip=None, first_worker=0,
                 passes=None):
        self.urls, self.sizes, self.mean, self.std, self.seed, self.scale = urls, sizes, mean, std, seed, scale
        self.rank, self.world_size, self.skip, self.passes = rank, world_size, skip or {}, passes
        self.first_worker = first_worker

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (worker + self.first_worker) % workers
        gid, total = self.rank * workers + worker, self.world_size * workers
        skip, skipped, epoch = self.skip.get(worker, 0), 0, 0
        while self.passes is None or epoch < self.passes:
            order = torch.randperm(len(self.urls), generator=generator("shards", self.seed, epoch)).tolist()
            mine = [self.urls[i] for i in order][gid::total]
            if not mine:
                raise RuntimeError(f"no shard for loader worker {gid} of {total}: use at least as many shards as "
                                   f"ranks x --workers")
            for url in mine:
                for key, sample in iterate_shard(url):
                    raw = next((sample[e] for e in ("jpg", "jpeg", "png", "webp") if e in sample), None)
                    try:
                        with Image.open(io.BytesIO(raw)) as im:
                            image = im.convert("RGB")
                    except Exception:  # no image, truncated, not an image: skip it, count it
                        skipped += 1
                        continue
                    if skip > 0:
                        skip -= 1
                        continue
                    box, flip = draw_views(torch.tensor([image.size]), 1, generator("stream", self.seed, key, epoch),
                                           self.scale)
                    crops = [make_crop(image, box[0, 0].tolist(), bool(flip[0, 0]), s, self.mean, self.std)
                             for s in self.sizes]
                    yield crops, key, torch.tensor([gid, skipped])
            epoch += 1


# ----------------------------------------------------------------------------------------------
# training helpers

def gather_batch(x, dist):
    """(B_local, ...) -> (B_global, ...) in rank order; gradients flow into this rank's part only."""
    if not dist.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    parts[dist.rank] = x
    return torch.cat(parts)


def lr_at(step, args, total):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, total - args.warmup)))
    return args.lr


def load_init(model, path):
    """Copy a student.pt / last.pt into model; another architecture or embedding size is a one-line error."""
    require(Path(path).is_file(), f"--init {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--init {path} is not a readable torch checkpoint ({type(e).__name__})") from None
    state = isinstance(ckpt, dict) and (ckpt.get("state_dict") or ckpt.get("model"))
    require(isinstance(state, dict), f"--init {path} is not a distill.py student.pt or last.pt")
    name = ckpt.get("timm_name")
    require(name in (None, model.timm_name), f"--init {path} holds a {name} student, not --student {model.timm_name}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"--init {path} does not fit --student {model.timm_name} (embed dim {model.embed_dim}, "
                        f"size {model.image_size}): {str(e).splitlines()[0][:200]}") from None


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluate_run(out, dataset, images, holdout, teacher, args, device):
    """Zero-shot accuracy of the final student.pt on --dataset's real test split (--eval-root) and on the held-out
    synthetic images (--holdout): the synthetic-to-real gap. Once, at the end: never used to pick a checkpoint."""
    evaluations = []
    if args.eval_root:
        evaluations.append((f"eval_{dataset}.json", dataset, {"data_root": args.eval_root}))
    if len(holdout):
        evaluations.append(("eval_holdout.json", str(images.root), {"subset": [images.paths[i] for i in holdout]}))
    for filename, eval_set, kw in evaluations:
        result = zeroshot.evaluate(str(out / "student.pt"), eval_set, teacher=teacher, device=device,
                                   workers=args.workers, progress=False, **kw)
        zeroshot.save_result(result, out / filename)
        print(f"{filename[5:-5]} | n {result['n']} | acc1 {100 * result['metrics']['acc1']:.2f} | "
              f"mean per-class recall {100 * result['metrics']['mean_per_class_recall']:.2f} | {out / filename}")


def check_args(args):
    """Reject values no run can use, with what to pass instead."""
    require(args.views >= 1, "--views must be >= 1")
    require(0.0 <= args.alpha <= 1.0, "--alpha must be in [0, 1]")
    require(args.temperature > 0, "--temperature must be positive")
    require(args.lr > 0 and math.isfinite(args.lr), "--lr must be a positive number")
    require(args.batch_size >= 1 and args.epochs >= 1 and args.steps >= 0 and args.warmup >= 0,
            "--batch-size and --epochs must be >= 1, --steps and --warmup >= 0")
    require(args.save_every >= 1 and args.log_every >= 1 and args.workers >= 0,
            "--save-every and --log-every must be >= 1, --workers >= 0")
    require(0.0 <= args.holdout < 1.0, "--holdout must be a fraction in [0, 1)")
    require(len(args.crop_scale) == 2 and 0 < args.crop_scale[0] <= args.crop_scale[1] <= 1,
            "--crop-scale takes two numbers 0 < MIN <= MAX <= 1")


def essential(saved):
    return json.loads(json.dumps({k: saved.get(k) for k in ESSENTIAL}))  # tuples -> lists


def benchmark_train(args, device):
    """`bench.py train`: images/s of one training step with the teacher cache, with the teacher online (--no-cache)
    and of the student alone (no teacher), on the same batch at the teacher's resolution; plus the cache build and
    the data loader on 512 px PNGs. `args`: bench.py's Args. Returns (Markdown table, record)."""
    import tempfile
    name, B = (args.student or args.students)[0], args.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        gen = torch.Generator().manual_seed(0)
        for i in range(4 * B):  # smooth 512 px images, like synth.py's
            small = TF.to_pil_image(torch.rand(3, 16, 16, generator=gen))
            small.resize((512, 512), Image.BICUBIC).save(Path(tmp) / f"{i:05d}.png")
        images = load_images(tmp)
        teacher = models.load_teacher(args.teacher, None, device=device)  # random weights do for timing
        run = Args(views=1, batch_size=B, workers=args.workers)
        t0 = time.time()
        cache = build_cache(Path(tmp) / "cache" / "bench.pt", {}, images, teacher, run, common.Dist(device=device),
                            device, {})
        cache_rate = len(images.paths) / (time.time() - t0)
        plan = functools.partial(plan_epoch, seed=0, train_idx=torch.arange(4 * B), cache=cache, sizes=images.sizes,
                                 scale=run.crop_scale)
        loader = torch.utils.data.DataLoader(Views(images, [teacher.image_size], teacher.mean, teacher.std),
                                             batch_sampler=step_batches(plan, 0, 12, 4, B, common.Dist()),
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
                loss = l2_loss(student(x).float(), t_emb)
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
    args = common.parse_args(Args, argv, description=__doc__)
    args.crop_scale = tuple(args.crop_scale)
    check_args(args)
    dist = common.setup_distributed(args.device)
    device = dist.device
    require(args.batch_size % dist.world_size == 0,
            f"--batch-size {args.batch_size} must split evenly across {dist.world_size} ranks")

    # derived values and every check that can fail, before anything is written
    shards = is_shards(args.data)  # stage 1: stream real image-text shards once, teacher online
    images = load_shards(args.data) if shards else load_images(args.data)
    if shards:
        require(args.loss == "l2", f"--loss {args.loss} on shards: stage 1 uses the L2 loss (captions are unused)")
        require(args.steps > 0, "shards are streamed: give the length of the run as --steps N (one pass: "
                                "samples / --batch-size)")
        require(args.holdout == 0, "--holdout needs a synth.py folder, not shards")
        args.cache = False  # one pass gains nothing from a cache
    else:
        args.data = str(images.root)
    args.init = str(Path(args.init).expanduser().resolve()) if args.init else None
    dataset = args.dataset or images.dataset
    out = Path(args.out or f"runs/{images.root.name}_{args.loss}_{args.student}").expanduser().resolve()
    require(args.loss == "l2" or images.labels is not None,
            f"--loss {args.loss} needs class labels, but {images.root} has no manifest.jsonl (a plain image "
            f"folder): use --loss l2 or a synth.py folder")
    require(args.holdout == 0 or images.labels is not None, "--holdout needs a synth.py folder (labels)")
    require(args.eval_root is None or dataset, "--eval-root needs --dataset NAME (the real test split to use)")
    require(args.eval_root is None or Path(args.eval_root).is_dir(), f"--eval-root {args.eval_root} is no folder")
    n = len(images.paths) if not shards else 0
    perm = torch.randperm(n, generator=generator("holdout", args.seed))
    n_hold = round(args.holdout * n)
    require(args.holdout == 0 or 0 < n_hold < n, f"--holdout {args.holdout} of {n} images leaves no image out or in")
    holdout, train_idx = perm[:n_hold].sort().values.tolist(), perm[n_hold:].sort().values
    require(shards or len(train_idx) >= args.batch_size, f"--batch-size {args.batch_size} is larger than the "
                                                         f"{len(train_idx)} training images: lower it")
    # the last partial batch of an epoch is dropped; a stream has no epochs (log lines say epoch 1)
    steps_per_epoch = len(train_idx) // args.batch_size if not shards else args.steps
    total = args.steps or args.epochs * steps_per_epoch
    state = None
    if args.resume:
        require((out / "last.pt").is_file(), f"--resume: nothing to resume, {out / 'last.pt'} does not exist")
        try:
            state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        except Exception as e:
            raise UserError(f"--resume: {out / 'last.pt'} is not readable ({type(e).__name__})") from None
        saved, now = essential(state["args"]), essential(dataclasses.asdict(args))
        diff = [f"--{k.replace('_', '-')} {saved[k]} (now {now[k]})" for k in ESSENTIAL if saved[k] != now[k]]
        require(not diff, f"--resume: {out} was started with {', '.join(diff)}; essential args must match "
                          f"(use another --out for a new run)")
        require(state["data"] == {"images": images.digest, "train": len(train_idx)},
                f"--resume: the images in {images.root} changed since {out} was started")
    else:
        require(not out.exists() or not any(out.iterdir()),
                f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    require(state is None or args.schedule != "cosine" or state["total"] == total,
            f"--resume: the cosine schedule was set for {state and state['total']} steps; keep --steps/--epochs")
    teacher = models.load_teacher(args.teacher, args.teacher_pretrained, device=device)
    teacher.model.eval().requires_grad_(False)  # frozen: only ever run under no_grad
    size = args.image_size or teacher.image_size
    common.seed_everything(args.seed)
    model = models.build_student(args.student, teacher.embed_dim, image_size=size,
                                 pretrained=args.student_pretrained)
    if args.init:
        load_init(model, args.init)
    classnames = templates = None
    if dataset or images.classnames:
        classnames, templates = zeroshot.resolve_classes(dataset or str(images.root), "paper")
        require(images.classnames is None or images.classnames == classnames,
                f"{images.root}'s classnames (synth.json) differ from --dataset {dataset}'s: pass the matching "
                f"--dataset or none")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        common.save_json(dataclasses.asdict(args), out / "args.json")
        data = (f"{len(images.paths)} shards, streamed" if shards else
                f"{n} images ({len(train_idx)} train, {n_hold} held out)")
        print(f"distill | {args.loss} | teacher {teacher.name} ({teacher.pretrained}) -> student {args.student} "
              f"{size}px, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {data} | "
              f"{total} steps of {args.batch_size} | device {device} "
              f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'} | world {dist.world_size}")

    # the teacher cache (image and class-prompt embeddings): built once per folder and teacher, reused by every run
    cache, class_text_emb = prepare_targets(images, teacher, classnames, templates, args, dist, device)
    text_dev = class_text_emb.to(device) if class_text_emb is not None else None
    labels_dev = images.labels.to(device) if images.labels is not None else None
    cache_emb = cache["emb"].to(device) if cache is not None else None  # (N, K, D) fp16

    # model, optimiser, resume state
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
    forward = torch.compile(model) if args.compile else model
    if dist.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None)
    sizes = [size] if args.cache or size == teacher.image_size else [size, teacher.image_size]
    plan = functools.partial(plan_epoch, seed=args.seed, train_idx=train_idx, cache=cache, sizes=images.sizes,
                             scale=args.crop_scale)
    if shards:
        # batch b of this rank comes from loader worker b % W (in order), so a resumed run fast-forwards each
        # worker past the samples of the batches it already delivered
        local, W = args.batch_size // dist.world_size, max(1, args.workers)
        stream = ShardStream(images.paths, sizes, teacher.mean, teacher.std, args.seed, args.crop_scale, dist.rank,
                             dist.world_size, skip={w: len(range(w, start, W)) * local for w in range(W)},
                             first_worker=start % W)
        loader = torch.utils.data.DataLoader(stream, batch_size=local, num_workers=args.workers,
                                             pin_memory=device.type == "cuda", generator=generator("loader", args.seed))
        loader = (batch for _, batch in zip(range(start, total), loader))  # exactly the remaining steps
    else:
        loader = torch.utils.data.DataLoader(
            Views(images, sizes, teacher.mean, teacher.std), num_workers=args.workers,
            pin_memory=device.type == "cuda", generator=generator("loader", args.seed),  # not the global stream
            batch_sampler=step_batches(plan, start, total, steps_per_epoch, args.batch_size, dist))
    if dist.is_main and args.resume:  # forget log lines of steps that the resumed run will redo
        kept = [ln for ln in (out / "log.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= start] \
            if (out / "log.jsonl").is_file() else []
        with common.atomic_write(out / "log.jsonl", "w") as f:
            f.write("".join(ln + "\n" for ln in kept))

    def checkpoint(step):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "total": total,
                "epoch": step // steps_per_epoch, "timm_name": args.student, "rng": rng_state(),
                "data": {"images": images.digest, "train": len(train_idx)}, "args": dataclasses.asdict(args)}

    # the training loop
    model.train()
    loss_fn = LOSSES[args.loss]
    last_saved, last_log, loss_sum, t_log, step = start, start, 0.0, time.time(), start
    width = max(5, len(str(total)))
    skipped = {}  # shards: loader worker -> undecodable samples it skipped
    for step, (crops, idx, view) in enumerate(loader, start=start + 1):  # step = steps done after this one
        if shards:  # idx: sample keys; view: (b, 2) of (worker, skipped so far)
            skipped.update({g: max(c, skipped.get(g, 0)) for g, c in view.tolist()})
        lr = lr_at(step - 1, args, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images_dev = crops[0].to(device, non_blocking=True)  # (b, 3, S, S)
        idx = idx.to(device) if not shards else None  # (b,) image indices
        if cache_emb is not None:
            t_emb = cache_emb[idx, view.to(device)].float()  # (b, D): no teacher forward
        else:
            with torch.no_grad(), common.autocast(device):
                t_emb = teacher.model.encode_image(crops[-1].to(device, non_blocking=True)).float()  # same view
        with common.autocast(device):
            s_emb = forward(images_dev).float()  # (b, D)
        y = labels_dev[idx] if labels_dev is not None else None
        # every rank computes the loss of the global batch (the contrastive term needs all negatives); its
        # gradient reaches only this rank's part, and DDP averages over ranks, hence the factor world_size
        loss = loss_fn(gather_batch(s_emb, dist), gather_batch(t_emb, dist), text_dev,
                       gather_batch(y, dist) if y is not None else None, args.temperature, args.alpha)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise UserError(f"loss is {loss_value} at step {step}: stopped; last good checkpoint "
                            + (f"{out / 'last.pt'} (step {last_saved})" if last_saved else "none (nothing saved)"))
        optimizer.zero_grad(set_to_none=True)
        (loss * dist.world_size).backward()
        optimizer.step()
        loss_sum += loss_value
        if step % args.log_every == 0 or step == total:
            n_steps = step - last_log
            rate = n_steps * args.batch_size / (time.time() - t_log)
            rec = {"step": step, "epoch": (step - 1) // steps_per_epoch + 1, "loss": loss_sum / n_steps, "lr": lr,
                   "img_per_s": round(rate, 2)}
            if dist.is_main:
                print(f"step {step:0{width}d}/{total:0{width}d} | epoch {rec['epoch']} | loss {rec['loss']:.4f} | "
                      f"lr {lr:.1e} | {rate:.0f} img/s", flush=True)
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
            last_log, loss_sum, t_log = step, 0.0, time.time()
        if step % args.save_every == 0 and step < total:
            if dist.is_main:
                common.save_torch(checkpoint(step), out / "last.pt")
            last_saved = step

    # the end: last.pt, the self-contained student.pt, evaluation
    if shards:
        bad = torch.tensor([sum(skipped.values())])
        if dist.enabled:
            torch.distributed.all_reduce(bad)
        if dist.is_main:
            print(f"stream: {(step - start) * args.batch_size} samples in {step - start} steps; skipped "
                  f"{int(bad)} undecodable samples")
            common.save_json({"samples": (step - start) * args.batch_size, "skipped": int(bad), "steps": step,
                              "shards": len(images.paths)}, out / "stream.json")
    if dist.enabled:
        torch.distributed.barrier()
    if dist.is_main:
        common.save_torch(checkpoint(step), out / "last.pt")
        common.save_torch(models.student_checkpoint(
            model, teacher, classnames=classnames, templates=templates, dataset=dataset, class_text_emb=class_text_emb,
            extra={"args": dataclasses.asdict(args), "step": step}), out / "student.pt")
        print(f"wrote {out / 'student.pt'} (step {step})")
        evaluate_run(out, dataset, images, holdout, teacher, args, device)
    common.cleanup_distributed()
    return out


if __name__ == "__main__":
    main()
