"""Common corruptions for zeroshot.py --corruption: the 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) at
severities 1-5, applied as ImageNet-C applies them, to the model's resized and centre-cropped uint8 image, before
the normalisation. The corruptions themselves are imagecorruptions-imaug's (the maintained fork of the ImageNet-C
code, pip install imagecorruptions-imaug); this module only selects, seeds and caches them.

Seeding: ImageNet-C drew its noise from NumPy's unseeded global stream, once. Here every image gets its own seed,
derived from --corruption-seed and its index in the test split (not from the corruption or the severity: the
same image meets the same random draws at every severity), so a rerun gives the same pixels.

Corrupt once, evaluate many: the corrupted split is cached as one (N, S, S, 3) uint8 file (memory-mapped, like
distill.py's image store) under <cache>/corruptions/, keyed by the image list, the model's resize and crop, the
corruption, the severity, the seed and the library's version; a second model with the same input pipeline reads
it and pays only its forward passes.
"""
import contextlib
import importlib.metadata
import inspect
import os
import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from helpers import common, eval_data
from helpers.common import UserError, require

# ImageNet-C's 15 test corruptions, in its order (noise, blur, weather, digital); the library's 4 "validation"
# corruptions (speckle noise, gaussian blur, spatter, saturate) are not part of the benchmark
NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
         "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
FAMILIES = {"noise": NAMES[0:3], "blur": NAMES[3:7], "weather": NAMES[7:11], "digital": NAMES[11:15]}
SEVERITIES = (1, 2, 3, 4, 5)
TAKE_SEED = ("glass_blur", "impulse_noise")  # these two ignore NumPy's global stream: they take a seed argument
PACKAGE = "imagecorruptions-imaug"
CACHE_VERSION = 1


def selection(corruption, severity):
    """[(name, severity)] for --corruption NAME|all (or a comma list) and --severity 1..5|all (or a comma list)."""
    names = list(NAMES) if corruption == "all" else corruption.split(",")
    unknown = [n for n in names if n not in NAMES]
    require(not unknown, f"unknown corruption '{','.join(unknown)}': use all or one of {', '.join(NAMES)}")
    levels = []
    for s in (SEVERITIES if severity == "all" else str(severity).split(",")):
        require(str(s).isdigit() and int(s) in SEVERITIES, f"--severity {severity}: use 1, 2, 3, 4, 5 or all")
        levels.append(int(s))
    return [(n, s) for n in names for s in levels]


def library():
    """The imagecorruptions module (imagecorruptions-imaug); a one-line error naming what to install when it or
    one of its dependencies (OpenCV, numba, scipy, scikit-image) is missing, or when the unmaintained
    imagecorruptions 1.1.2 stands in its place (it passes scikit-image an argument it no longer takes)."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        import imagecorruptions
    except ImportError as e:
        raise UserError(f"--corruption needs the package {PACKAGE} ({e.name or 'imagecorruptions'} is missing): "
                        f"pip install {PACKAGE}") from None
    if version is None:
        raise UserError(f"--corruption needs {PACKAGE}; the installed 'imagecorruptions' is the unmaintained "
                        f"original, which fails with current scikit-image: pip uninstall imagecorruptions && "
                        f"pip install {PACKAGE}")
    return imagecorruptions, version


def image_seed(seed, index):
    """The seed of image `index` (a 32-bit int): the same at every corruption and severity."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def corrupt(image, name, severity, seed):
    """(H, W, 3) uint8 -> (H, W, 3) uint8, the same pixels for the same seed. NumPy's global stream (which most
    corruptions draw from) is seeded for the call and restored after it, so callers' streams are untouched."""
    import imagecorruptions  # library() has checked it: here a plain import, no metadata look-up per image
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = imagecorruptions.corrupt(image, corruption_name=name, severity=severity,
                          **({"seed": seed} if name in TAKE_SEED else {}))
    finally:
        np.random.set_state(state)
    return out


# ----------------------------------------------------------------------------------------------
# the model's preprocessing, split where ImageNet-C corrupts: after resize and crop, before to-tensor and normalise

def split_transform(transform):
    """(geometry: PIL -> PIL, to_tensor: PIL -> normalised tensor) of a torchvision Compose such as open_clip's
    Resize, CenterCrop, [convert], ToTensor, Normalize."""
    steps = list(getattr(transform, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__), None)
    require(cut is not None, f"--corruption needs a preprocessing with a ToTensor step to corrupt the image before "
                             f"it (this model's is {type(transform).__name__})")
    import torchvision.transforms as T
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


def describe(transform):
    """A stable text of a transform for cache keys (a plain function's repr holds its address)."""
    return [t.__qualname__ if inspect.isroutine(t) else repr(t) for t in transform.transforms]


def image_list(ds):
    """What identifies a split's images for the cache key: each file's path, size and mtime (a changed file is a
    new entry), or, for a dataset that names no files, its type and length."""
    base, index = (ds.dataset, list(ds.indices)) if isinstance(ds, torch.utils.data.Subset) else (ds, None)
    paths = eval_data.image_paths(base)
    if paths is None:
        return [type(base).__name__, len(ds)]
    out = []
    for p in (paths if index is None else [paths[i] for i in index]):
        try:
            st = os.stat(p)
            out.append([p, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([p, None, None])
    return out


class _Corrupter(torch.utils.data.Dataset):
    """Loader-process work: image i (through the model's resize and crop) to uint8, corrupted with its seed."""

    def __init__(self, ds, name, severity, seed):
        self.ds, self.name, self.severity, self.seed = ds, name, severity, seed

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            image, label = self.ds[i]
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated, unidentified, bad header
            return i, None, -1, common.first_line(e, 100)
        out = corrupt(pixels, self.name, self.severity, image_seed(self.seed, i))
        return i, np.require(out, requirements="W"), int(label), None  # writable: the loader wraps it in a tensor


class CorruptedSet(torch.utils.data.Dataset):
    """A test split corrupted once and cached: (normalised tensor, label) per image. `ds` yields PIL images after
    the model's resize and crop (split_transform's geometry), `to_tensor` does the rest. An image that could not
    be decoded raises OSError with its reason, so eval_data.SkipBroken names and skips it as in a clean run."""

    def __init__(self, ds, geometry, to_tensor, name, severity, seed=0, workers=0):
        _, version = library()
        self.to_tensor = to_tensor
        key = common.fingerprint([CACHE_VERSION, version, image_list(ds), describe(geometry), name, severity, seed])
        self.path = common.cache_root() / "corruptions" / f"{name}-{severity}-{key}.u8"
        self.record_path = self.path.with_suffix(".json")
        t0 = time.time()
        self.cached = self.record_path.is_file() and self.path.is_file()
        if not self.cached:
            self.build(ds, name, severity, seed, workers)
        record = common.read_json(self.record_path, "corruption cache record", keys=("shape", "labels", "bad"))
        self.labels, self.bad = record["labels"], {int(i): reason for i, reason in record["bad"]}
        self.images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=tuple(record["shape"]))
        self.seconds = time.time() - t0  # building or reading the cache

    def build(self, ds, name, severity, seed, workers):
        """Corrupt every image (loader processes in parallel) into a temp file renamed into place, then write the
        record (which marks the entry complete); two processes building one entry each write whole files."""
        loader = torch.utils.data.DataLoader(_Corrupter(ds, name, severity, seed), batch_size=None,
                                             num_workers=workers)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        store, labels, bad = None, [-1] * len(ds), []
        try:
            for i, pixels, label, reason in tqdm(loader, desc=f"{name} {severity}", unit="img", leave=False,
                                                 disable=None):
                if pixels is None:
                    bad.append((i, reason))
                    continue
                pixels = pixels.numpy() if torch.is_tensor(pixels) else pixels
                if store is None:  # the centre crop makes every image the same size: (N, S, S, 3)
                    store = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(ds), *pixels.shape))
                store[i], labels[i] = pixels, int(label)
            if store is None:  # no image decoded: an empty entry, and the evaluation names every failure
                store = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(1, 1, 1, 3))
            shape = store.shape
            store.flush()
            del store
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        common.save_json({"shape": list(shape), "labels": labels, "bad": sorted(bad), "corruption": name,
                          "severity": severity, "seed": seed}, self.record_path)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if i in self.bad:
            raise OSError(self.bad[i])
        return self.to_tensor(Image.fromarray(np.asarray(self.images[i]))), self.labels[i]


# ----------------------------------------------------------------------------------------------
# bench.py corruptions: CPU cost per image

def time_corruptions(size=224, images=3, seed=0):
    """{name: {severity: CPU ms per image}} on `images` random smooth images of size x size (one process, one
    thread: the cost a loader process pays), plus the first call's ms per corruption (glass blur compiles with
    numba there)."""
    rng = np.random.default_rng(seed)
    base = rng.random((images, 8, 8, 3))  # blocks of colour plus pixel noise: neither flat nor pure noise
    pics = [np.clip(np.kron(b, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size] * 200
                    + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8) for b in base]
    first, cost = {}, {}
    for name in NAMES:
        t = time.process_time()
        corrupt(pics[0], name, 1, 0)
        first[name] = 1000 * (time.process_time() - t)
        cost[name] = {}
        for s in SEVERITIES:
            t = time.process_time()
            for k, p in enumerate(pics):
                corrupt(p, name, s, k)
            cost[name][s] = 1000 * (time.process_time() - t) / len(pics)
    return cost, first
