"""Training views for distill.py: the image store, crop boxes, crop rendering and the teacher cache.

A *view* of training image i is a RandomResizedCrop box (top, left, height, width) plus a horizontal flip. The
teacher cache (<data>/cache/<teacher>-K<views>-<key>.pt) holds K views per image, drawn once from their own seeded
generator, and the frozen teacher's embedding of each: (N, K, D) fp16. A training step picks one view per image and
renders that same crop for the student, so the cached embedding is the teacher's embedding of exactly the pixels
the student sees, and the teacher never runs during training.

Images are decoded once: the image store (<data>/cache/images-<key>.u8, memory-mapped, (N, R, R, 3) uint8, with
a JSON record) holds every training image resized to R x R. A step gathers its images from the store, moves them
to the training device and renders all crops and flips there in one batched call (`render_views`); the teacher
cache is built through the same function. No loader processes, no per-step decoding.

  load_images      the training images, decoded once into the store; undecodable ones are skipped and named
  draw_views       k crop boxes + flips per image, vectorised, torchvision's RandomResizedCrop rule
  render_views     the crops of a batch, on the device (roi_align: bilinear, averaging when it shrinks)
  make_crop        one view of a PIL image (stage 1's shard stream, which is read once)
  prepare_cache    the teacher cache: read, or built under a lock
  epoch_views, step_batches  which image and view each rank sees at each step: pure functions of (seed, step)
"""
import contextlib
import errno
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from helpers import common, devices
from helpers.common import require

try:
    import fcntl  # one writer per cache folder: a second run waits, then reuses what the first built (POSIX)
except ImportError:  # pragma: no cover
    fcntl = None

CACHE_VERSION = 2  # 2: views rendered from the image store by roi_align (1: PIL bicubic from the files)
STORE_VERSION = 1
MAX_BAD_SHARE = 0.01  # more undecodable images than this share and the folder is refused, not trained on


# ----------------------------------------------------------------------------------------------
# the images

@dataclass
class ImageSet:
    root: Path
    paths: list                      # relative to root; undecodable images already left out
    labels: Optional[torch.Tensor]   # (N,) class index; None for an unlabelled folder
    classnames: Optional[list]
    dataset: Optional[str]           # synth.json's helpers/domains.py name
    image_sizes: torch.Tensor        # (N, 2) width, height in pixels
    digest: str                      # paths, labels and file sizes: part of the cache metadata
    skipped: tuple = ()              # (relative path, reason) of the images that did not decode
    prompts: Optional[list] = None   # each image's diffusion prompt (manifest.jsonl), for --text caption
    store: Optional[np.ndarray] = None  # (N_all, R, R, 3) uint8, memory-mapped: every decodable image, resized
    store_rows: Optional[torch.Tensor] = None  # (N,) row of each kept image in the store
    store_key: Optional[str] = None  # names, sizes and mtimes of the files: changes when any image does
    cache: Optional[Path] = None     # the folder of the store and the teacher cache (cache_folder)


def seeded_generator(*key):
    """A torch.Generator seeded from a key: its own random stream, never the global one."""
    return torch.Generator().manual_seed(int(common.fingerprint(list(key)), 16))


def cache_folder(root, cache_dir=None):
    """Where the image store and the teacher cache of the images in `root` live: <root>/cache by default, so every
    run on a folder finds them; with --cache-dir (a read-only or shared data folder) a subfolder of it named for
    the data folder and its path, so folders never share (nor clear) each other's files."""
    if cache_dir is None:
        return root / "cache"
    return Path(cache_dir).expanduser().resolve() / f"{root.name}-{common.fingerprint(str(root), 8)}"


def load_images(data, store_size=288, workers=0, dist=None, cache_dir=None):
    """The training images: a synth.py folder (labels and prompts from manifest.jsonl) or any image folder (no
    labels). Each image is decoded once into the image store (rank 0, under the cache lock; reused while names,
    sizes and mtimes are unchanged) in cache_folder(data, cache_dir). Undecodable images are skipped and named;
    more than MAX_BAD_SHARE of them is a one-line error."""
    dist = dist or devices.Dist()
    root = Path(data).expanduser().resolve()
    require(root.is_dir(), f"--data {data} does not exist: pass a synth.py output folder or an image folder")
    cache = cache_folder(root, cache_dir)
    try:
        common.prepare_out_dir(cache, "--cache-dir" if cache_dir else "the cache folder")
    except common.UserError as e:
        raise common.UserError(f"{e}" if cache_dir else f"{e} with --cache-dir DIR (the image store and the teacher "
                                                        f"cache go to <data>/cache by default)") from None
    labels = classnames = dataset = prompts = None
    if (root / "manifest.jsonl").is_file():
        items, classnames, info = common.load_manifest(root)
        paths, labels, dataset = [p for p, _ in items], [y for _, y in items], info.get("dataset")
        prompts = [rec.get("prompt") for _, rec in common.read_jsonl(root / "manifest.jsonl", "manifest")]
    else:
        paths = common.list_images(root)
    require(paths, f"--data {root} holds no images ({', '.join(common.IMAGE_EXTS)} files or a synth.py "
                   f"manifest.jsonl)")
    record, store, store_key = open_store(root, paths, store_size, workers, dist, cache)
    bad = [tuple(b) for b in record["bad"]]
    named = ", ".join(f"{p} ({why})" for p, why in bad[:3])
    require(len(bad) <= MAX_BAD_SHARE * len(paths), f"{len(bad)} of {len(paths)} images in {root} do not decode "
                                                    f"(first: {named}): repair or remove them")
    keep = [i for i, s in enumerate(record["sizes"]) if s is not None]
    sizes = [record["sizes"][i] for i in keep]
    rows = torch.tensor([record["rows"][i] for i in keep], dtype=torch.long)
    paths = [paths[i] for i in keep]
    labels = torch.tensor([labels[i] for i in keep]) if labels is not None else None
    prompts = [prompts[i] for i in keep] if prompts is not None else None
    nbytes = [(root / p).stat().st_size for p in paths]
    digest = common.fingerprint([paths, None if labels is None else labels.tolist(), nbytes])
    return ImageSet(root, paths, labels, classnames, dataset, torch.tensor(sizes), digest, tuple(bad), prompts,
                    store, rows, store_key, cache)


class DecodeForStore(torch.utils.data.Dataset):
    """Image i -> (i, (R, R, 3) uint8 array or None, (width, height) or None, reason): one full decode."""

    def __init__(self, root, paths, resolution):
        self.root, self.paths, self.resolution = root, paths, resolution

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.root / self.paths[i]) as im:
                im.load()  # a truncated file fails here, not at step N of a run
                size, im = im.size, im.convert("RGB")
        except common.UNDECODABLE as e:  # PIL: truncated, unidentified, bad header, a bomb; missing
            return i, None, None, common.first_line(e, 100)
        if im.size != (self.resolution,) * 2:  # R x R: boxes are rescaled per axis when a crop is rendered
            im = im.resize((self.resolution,) * 2, Image.BILINEAR)  # antialiased when it shrinks
        return i, np.array(im, dtype=np.uint8), size, None


def open_store(root, paths, store_size, workers, dist, folder):
    """(record, memory-mapped store) of these images: {"resolution", "sizes", "rows", "bad"}. Built by rank 0
    under the cache lock on the first run over the folder (or after any image changed); other ranks wait."""
    stats = []
    for p in paths:
        with contextlib.suppress(OSError):
            st = (root / p).stat()
            stats.append([st.st_size, st.st_mtime_ns])
            continue
        stats.append(None)
    key = common.fingerprint([STORE_VERSION, store_size, paths, stats])
    record_path, store_path = folder / f"images-{key}.json", folder / f"images-{key}.u8"
    with cache_lock(folder, dist):
        if dist.is_main and not (record_path.is_file() and store_path.is_file()):
            build_store(root, paths, store_size, workers, record_path, store_path)
    if dist.enabled:
        torch.distributed.barrier()
    record = common.read_json(record_path, "image store record", keys=("resolution", "sizes", "rows", "bad"))
    r, n = record["resolution"], max(record["rows"] + [-1]) + 1
    store = np.memmap(store_path, dtype=np.uint8, mode="r", shape=(n, r, r, 3)) if n else None
    return record, store, key


def check_free_space(folder, nbytes, what):
    """Refuse before writing when the file system of `folder` (or its nearest existing parent) has less free space
    than `nbytes`, with what would not fit."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    require(nbytes <= free, f"{what} needs {nbytes / 2**30:.2f} GiB but {probe} has {free / 2**30:.2f} GiB free: "
                            f"free some space, or pass a smaller --store-size")


def reserve(path, nbytes):
    """Create `path` with all its nbytes allocated on disk (zeros), so that writing them through a memory map cannot
    fail later. A file system without fallocate: written with ordinary writes instead."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
            return
        except (AttributeError, OSError) as e:
            if getattr(e, "errno", None) not in (None, errno.EOPNOTSUPP, errno.EINVAL):
                raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
        block = bytes(2**20)
        for start in range(0, nbytes, len(block)):
            f.write(block[:min(len(block), nbytes - start)])


def build_store(root, paths, store_size, workers, record_path, store_path):
    """Decode every image once (loader processes in parallel) into an (N, R, R, 3) uint8 file, R = the smaller of
    store_size and the largest image side; written to a temp file and renamed, then its record."""
    sizes, bad = [], []
    for p in paths:  # headers only: cheap, and R must be known before the decode
        try:
            with Image.open(root / p) as im:
                sizes.append(im.size)
        except common.UNDECODABLE as e:
            sizes.append(None)
            bad.append((p, common.first_line(e, 100)))
    resolution = min(store_size, max([max(s) for s in sizes if s] or [1]))
    good = [i for i, s in enumerate(sizes) if s]
    rows = {i: r for r, i in enumerate(good)}
    shape = (max(1, len(good)), resolution, resolution, 3)
    check_free_space(store_path.parent, math.prod(shape), f"the image store of {len(good)} images at "
                                                          f"{resolution} x {resolution} px")
    tmp = store_path.with_name(f".{store_path.name}.{os.getpid()}.tmp")
    # more decode processes than CPUs only compete for them (and torch warns about it)
    loader = torch.utils.data.DataLoader(DecodeForStore(root, [paths[i] for i in good], resolution), batch_size=None,
                                         num_workers=min(workers, devices.available_cpus()))
    try:
        reserve(tmp, math.prod(shape))  # a full disk is an OSError here, not a SIGBUS from the memory map later
        store = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
        for j, pixels, size, reason in tqdm(loader, desc=f"image store {resolution}px", unit="img", disable=None):
            i = good[j]
            if pixels is None:
                sizes[i] = None
                bad.append((paths[i], reason))
            else:
                store[rows[i]], sizes[i] = pixels.numpy() if torch.is_tensor(pixels) else pixels, size
        store.flush()
        del store
        os.replace(tmp, store_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for old in record_path.parent.glob("images-*"):  # stores of an older image list: never read again
        if old not in (record_path, store_path):
            old.unlink(missing_ok=True)
    common.save_json({"resolution": resolution, "sizes": sizes, "rows": [rows.get(i, -1) for i in range(len(paths))],
                      "bad": sorted(bad)}, record_path)


# ----------------------------------------------------------------------------------------------
# views: crop boxes and their pixels

def draw_views(image_sizes, k, gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """k RandomResizedCrop boxes + flips per image from an explicit generator (torchvision's get_params uses the
    global RNG), vectorised, torchvision's rule: the first of `tries` (area, aspect) draws that fits, else a
    central crop. image_sizes (N, 2) of (width, height) -> boxes (N, k, 4) of (top, left, height, width),
    flips (N, k)."""
    n = len(image_sizes)
    img_w = image_sizes[:, 0].double().view(n, 1, 1)
    img_h = image_sizes[:, 1].double().view(n, 1, 1)
    area = img_w * img_h * torch.empty(n, k, tries, dtype=torch.float64).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(n, k, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                     generator=gen)
    w, h = (area * log_r.exp()).sqrt().round(), (area / log_r.exp()).sqrt().round()  # (N, k, tries)
    fits = (w > 0) & (h > 0) & (w <= img_w) & (h <= img_h)
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # index of the first fitting draw
    w, h = w.gather(-1, first)[..., 0], h.gather(-1, first)[..., 0]  # (N, k)
    img_w, img_h = img_w[..., 0], img_h[..., 0]  # (N, 1)
    # no draw fits (rare, extreme aspect ratios): the largest central crop within the ratio range
    central_w = torch.where(img_w / img_h > ratio[1], (img_h * ratio[1]).round(), img_w)
    central_h = torch.where(img_w / img_h < ratio[0], (img_w / ratio[0]).round(), img_h)
    ok = fits.any(-1)
    w, h = torch.where(ok, w, central_w), torch.where(ok, h, central_h)
    top = torch.where(ok, (torch.rand(n, k, dtype=torch.float64, generator=gen) * (img_h - h + 1)).floor(),
                      ((img_h - h) / 2).floor())
    left = torch.where(ok, (torch.rand(n, k, dtype=torch.float64, generator=gen) * (img_w - w + 1)).floor(),
                       ((img_w - w) / 2).floor())
    flips = torch.rand(n, k, generator=gen) < 0.5
    return torch.stack([top, left, h, w], -1).int(), flips


def render_views(images, idx, boxes, flips, resolution, mean, std, device):
    """The crops of a batch, rendered on `device` in one call: images idx (b,) gathered from the store, boxes
    (b, 4) of (top, left, h, w) in the images' own pixels, flips (b,) -> (b, 3, resolution, resolution),
    normalised with the teacher's mean and std. roi_align samples bilinearly and averages several samples per
    output pixel where the crop shrinks (an antialiased bilinear resize, as the authors' PIL crops)."""
    pixels = torch.from_numpy(images.store[images.store_rows[idx].numpy()])  # (b, R, R, 3) uint8, from the mmap
    pixels = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float()  # (b, 3, R, R)
    r = pixels.shape[-1]
    scale = r / images.image_sizes[idx].double()  # (b, 2): store pixels per image pixel, x and y
    top, left, h, w = boxes.double().unbind(-1)
    rois = torch.stack([torch.arange(len(idx), dtype=torch.double), left * scale[:, 0], top * scale[:, 1],
                        (left + w) * scale[:, 0], (top + h) * scale[:, 1]], -1)  # (b, 5): index, x1, y1, x2, y2
    crops = roi_align(pixels, rois.float().to(device), resolution, aligned=True) / 255  # (b, 3, S, S) in [0, 1]
    crops = torch.where(flips.to(device).view(-1, 1, 1, 1), crops.flip(-1), crops)
    mean, std = (torch.tensor(m, device=device).view(1, 3, 1, 1) for m in (mean, std))
    return (crops - mean) / std


def make_crop(image, box, flip, size, mean, std):
    """One view of a PIL image: crop box (top, left, h, w), bilinear resize to size x size, flip, normalise."""
    top, left, h, w = box
    image = TF.resized_crop(image, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True)
    if flip:
        image = TF.hflip(image)
    return TF.normalize(TF.to_tensor(image), mean, std)  # (3, size, size)


# ----------------------------------------------------------------------------------------------
# the teacher cache

def cache_metadata(images, teacher, args):
    """(metadata a cache must match exactly, its path). The path's key leaves out the image list, so a changed
    folder rewrites the same file instead of piling up new ones."""
    meta = {"version": CACHE_VERSION, "teacher": teacher.weights_key(), "views": args.views, "seed": args.cache_seed,
            "resolution": teacher.image_size, "transform": {"crop": "RandomResizedCrop", "scale": args.crop_scale,
            "ratio": [3 / 4, 4 / 3], "interpolation": "roi_align bilinear", "store": images.store.shape[1],
            "flip": 0.5, "mean": teacher.mean, "std": teacher.std}, "images": images.digest, "n": len(images.paths),
            "files": images.store_key}
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as they come back from disk
    name = Path(teacher.name.split(":")[-1]).name.replace("/", "_")
    key = common.fingerprint({k: v for k, v in meta.items() if k not in ("images", "n", "files")})
    return meta, images.cache / f"{name}-K{args.views}-{key}.pt"


def read_cache(path, meta):
    """The cache at path if its metadata matches this run exactly, else None (it will be rebuilt)."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file is rebuilt, never trusted
        return None
    return cache if isinstance(cache, dict) and cache.get("meta") == meta else None


@contextlib.contextmanager
def cache_lock(folder, dist):
    """Rank 0 holds <data>/cache/.lock while it reads or writes the cache: a second run on the same folder waits,
    then reuses. Temp and part files found under the lock were left by a killed run: they are removed."""
    if not dist.is_main or fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in [*folder.glob(".*.tmp"), *folder.glob("*.pt.part*")]:
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_cache(path, meta, images, teacher, args, dist, device):
    """Draw K views per image from the cache's own generator, embed each once with the frozen teacher, write the
    cache atomically. Under torchrun each rank embeds every world_size-th image and rank 0 merges."""
    boxes, flips = draw_views(images.image_sizes, args.views, seeded_generator("cache", args.cache_seed),
                              args.crop_scale)
    n, k_views = len(images.paths), args.views
    mine = list(range(dist.rank, n, dist.world_size))
    pairs = torch.tensor([(i, k) for i in mine for k in range(k_views)], dtype=torch.long).view(-1, 2)
    emb = torch.zeros(n, k_views, teacher.embed_dim, dtype=torch.float16)  # (N, K, D)
    with torch.no_grad():  # fp32 (TF32 on GPU): the cache is built once and read by every later run
        for batch in tqdm(pairs.split(args.batch_size), desc="teacher cache", disable=None if dist.is_main else True):
            i, k = batch.unbind(-1)  # (b,), (b,)
            crops = render_views(images, i, boxes[i, k], flips[i, k], teacher.image_size, teacher.mean, teacher.std,
                                 device)  # the same function renders the student's crops
            emb[i, k] = teacher.model.encode_image(crops).float().cpu().half()
    if dist.enabled:  # each rank wrote its rows; rank 0 gathers them through the file system
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
                           "skipped": list(images.skipped)}, path)
    if dist.enabled:
        torch.distributed.barrier()
    return read_cache(path, meta)


def prepare_cache(images, teacher, args, dist, device):
    """The teacher cache of this folder, teacher and K (the image targets): read when its metadata matches this run,
    else built. A cache written before the text embeddings moved out also held them; it loads as it is, and they
    are not read."""
    meta, path = cache_metadata(images, teacher, args)
    with cache_lock(path.parent, dist):
        cache = read_cache(path, meta)
        if dist.enabled:
            torch.distributed.barrier()  # every rank has decided before anyone rewrites the file
        if cache is None:
            t0 = time.time()
            cache = build_cache(path, meta, images, teacher, args, dist, device)
            if dist.is_main:
                print(f"teacher cache: built {path} ({len(images.paths)} images x {args.views} views) in "
                      f"{time.time() - t0:.0f}s")
        elif dist.is_main:
            print(f"teacher cache: reusing {path}")
    return cache


# ----------------------------------------------------------------------------------------------
# which view of which image each step sees

def epoch_views(epoch, seed, train_idx, cache, image_sizes, scale):
    """Image order and one view per image for an epoch: a pure function of (seed, epoch), so resume and any
    number of ranks or workers see the same batches. With --no-cache the views are fresh draws."""
    gen = seeded_generator("epoch", seed, epoch)
    order = train_idx[torch.randperm(len(train_idx), generator=gen)]  # (n,)
    if cache is not None:
        view = torch.randint(cache["boxes"].shape[1], (len(order),), generator=gen)  # (n,)
        return order, view, cache["boxes"][order, view], cache["flips"][order, view]
    boxes, flips = draw_views(image_sizes[order], 1, gen, scale)
    return order, torch.zeros_like(order), boxes[:, 0], flips[:, 0]


def step_batches(epoch_views, start, total, steps_per_epoch, batch_size, dist):
    """This rank's share of the global batch of each step start..total-1: (image idx (b,), view (b,), boxes (b, 4),
    flips (b,)), a contiguous 1/world_size slice, so N processes together see exactly the images one process sees."""
    local, current = batch_size // dist.world_size, (None, None)
    for step in range(start, total):
        epoch, b = divmod(step, steps_per_epoch)
        if current[0] != epoch:
            current = (epoch, epoch_views(epoch))
        lo = b * batch_size + dist.rank * local
        yield tuple(x[lo:lo + local] for x in current[1])
