"""The offline test kit: tiny real models and fake datasets, built and saved to disk,
then loaded by the project's own loading code. No network, no downloaded weights.

  make_tiny_teacher(dir)          an open_clip CLIP (64 px, 2 layers, width 64, embed_dim 32) saved as
                                  an open_clip folder, loaded with `local-dir:PATH`
  make_fake_dataset(name, root)   a few small JPEGs in the on-disk layout torchvision expects for
                                  pets, flowers, cars, food101, dtd, fgvc_aircraft
  make_image_folder(dir, ...)     class_name/*.jpg
  add_to_hub_cache(cache, repo, dir)  a folder's files as a Hugging Face hub cache entry for `repo`
  add_teacher_to_hub_cache(cache, tiny, name, tag)  the tiny CLIP's weights where open_clip looks for name + tag
  simulate_read_only(monkeypatch, dir)  creating files or folders below `dir` fails with EROFS, as on a ro mount
  exits_with_one_line(main, argv, capsys, expect)  the check every bad-input test makes

From a shell (the README's CPU quick start):
  python tests/kit.py teacher /tmp/tiny_clip         # the tiny open_clip teacher: --teacher local-dir:/tmp/tiny_clip
  python tests/kit.py dataset pets /tmp/data         # a fake Pets test split under /tmp/data (any name above)
  python tests/kit.py diffusion /tmp/tiny_sd         # a tiny diffusers pipeline: synth.py --generator /tmp/tiny_sd
"""
import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if __name__ == "__main__":  # run as a script from the repo root: the project's modules sit one folder up
    import sys
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from helpers import domains  # noqa: E402

TINY_TEACHER_CFG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711]},
}


def make_tiny_teacher(folder, seed=0):
    """Random-weight tiny open_clip model saved as an open_clip folder; returns 'local-dir:<folder>'."""
    import open_clip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_TEACHER_CFG, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model("local-dir:" + str(folder))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return "local-dir:" + str(folder)


def random_image(rng, size=(40, 48), label=None):
    """Noise plus a label-dependent tint, so images differ by class and by index."""
    h, w = size
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if label is not None:
        tint = np.array([(label * 53) % 256, (label * 97) % 256, (label * 151) % 256], dtype=np.uint16)
        arr = ((arr.astype(np.uint16) + tint) // 2).astype(np.uint8)
    return Image.fromarray(arr)


def _save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90)


def _labels(n, num_classes, seed, all_classes=False):
    """n labels in [0, num_classes): every class once first if all_classes, then random."""
    rng = random.Random(seed)
    labels = list(range(num_classes)) if all_classes else []
    labels += [rng.randrange(num_classes) for _ in range(max(0, n - len(labels)))]
    rng.shuffle(labels)
    return labels


def make_fake_dataset(name, root, n=24, seed=0):
    """Write a fake `split=test` (and a 2-image train split where cheap) for torchvision's `name`.

    Returns the list of test labels in the order torchvision will read them.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classnames = domains.CLASSNAMES[name]
    C = len(classnames)
    if name == "pets":
        base = root / "oxford-iiit-pet"
        labels = _labels(max(n, C), C, seed, all_classes=True)  # torchvision derives classes from the split
        lines = []
        for i, y in enumerate(labels):
            image_id = f"{classnames[y].replace(' ', '_')}_{i + 1}"
            _save(random_image(rng, label=y), base / "images" / f"{image_id}.jpg")
            lines.append(f"{image_id} {y + 1} {1 + (y % 2)} 1")
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / "test.txt").write_text("\n".join(lines) + "\n")
        (base / "annotations" / "trainval.txt").write_text("\n".join(lines[:2]) + "\n")
        return labels
    if name == "flowers":
        from scipy.io import savemat
        base = root / "flowers-102"
        labels = _labels(n, C, seed)
        if labels[0] == 1:  # CLIP_benchmark shifts all labels when the first one is 1 (old torchvision)
            labels[0] = 0
        n_total = n + 4  # image ids 1..n are test, n+1..n+4 train/val
        all_labels = labels + [0, 1, 2, 3]
        for i, y in enumerate(all_labels):
            _save(random_image(rng, label=y), base / "jpg" / f"image_{i + 1:05d}.jpg")
        savemat(base / "imagelabels.mat", {"labels": np.array(all_labels) + 1})
        savemat(base / "setid.mat", {"tstid": np.arange(1, n + 1), "trnid": np.array([n + 1, n + 2]),
                                     "valid": np.array([n + 3, n_total])})
        return labels
    if name == "cars":
        from scipy.io import savemat
        base = root / "stanford_cars"
        labels = _labels(n, C, seed)
        recs = []
        for i, y in enumerate(labels):
            fname = f"{i + 1:05d}.jpg"
            _save(random_image(rng, label=y), base / "cars_test" / fname)
            recs.append((fname, y + 1))
        annos = np.array(recs, dtype=[("fname", "O"), ("class", "O")])
        (base / "devkit").mkdir(parents=True, exist_ok=True)
        savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annos})
        savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(classnames, dtype=object)})
        return labels
    if name == "food101":
        base = root / "food-101"
        labels = _labels(n, C, seed)
        raw = [c.replace(" ", "_") for c in classnames]
        meta = {c: [] for c in raw}
        for i, y in enumerate(labels):
            rel = f"{raw[y]}/{100000 + i}"
            meta[raw[y]].append(rel)
            _save(random_image(rng, label=y), base / "images" / f"{rel}.jpg")
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / "test.json").write_text(json.dumps(meta))
        # torchvision reads images class by class (json key order), so return labels in that order
        return [y for c in range(C) for y in [c] * len(meta[raw[c]])]
    if name == "dtd":
        base = root / "dtd" / "dtd"
        labels = _labels(max(n, C), C, seed, all_classes=True)  # classes come from the split file
        lines = []
        for i, y in enumerate(labels):
            rel = f"{classnames[y]}/{classnames[y]}_{i:04d}.jpg"
            _save(random_image(rng, label=y), base / "images" / rel)
            lines.append(rel)
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / "test1.txt").write_text("\n".join(lines) + "\n")
        return labels
    if name == "fgvc_aircraft":
        base = root / "fgvc-aircraft-2013b" / "data"
        labels = _labels(n, C, seed)
        lines = []
        for i, y in enumerate(labels):
            image_name = f"{1000000 + i}"
            _save(random_image(rng, label=y), base / "images" / f"{image_name}.jpg")
            lines.append(f"{image_name} {classnames[y]}")
        (base / "variants.txt").write_text("\n".join(classnames) + "\n")
        (base / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
        return labels
    raise ValueError(name)


def make_image_folder(folder, classnames=("circle", "square", "triangle"), per_class=4, seed=0, size=(40, 48)):
    """class_name/NNN.jpg folders (an ImageFolder-style dataset)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for y, c in enumerate(classnames):
        for i in range(per_class):
            _save(random_image(rng, size=size, label=y), folder / c / f"{i:03d}.jpg")
    return folder


def make_synth_folder(folder, dataset=None, classnames=("circle", "square", "triangle"), per_class=4, seed=0,
                      size=(40, 48)):
    """A folder in synth.py's output format, with random images instead of generated ones."""
    from helpers.common import save_json
    folder = Path(folder)
    if dataset is not None:
        classnames = domains.CLASSNAMES[dataset]
    rng = np.random.default_rng(seed)
    lines = []
    for y, c in enumerate(classnames):
        for i in range(per_class):
            rel = f"images/{y:03d}/{i:05d}.png"
            _save(random_image(rng, size=size, label=y), folder / rel)
            lines.append({"path": rel, "label": y, "classname": c, "prompt": f"a photo of a {c}", "seed": i,
                          "generator": "kit-random"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    save_json({"dataset": dataset, "classnames": list(classnames), "generator": "kit-random",
               "per_class": per_class}, folder / "synth.json")
    return folder


def add_to_hub_cache(cache, repo, folder, revision="0" * 40):
    """Lay out `folder`'s files as the snapshot of `repo` in a Hugging Face hub cache (HF_HUB_CACHE), the layout
    huggingface_hub reads offline: models--ORG--NAME/refs/main -> snapshots/<revision>/<files>."""
    entry = Path(cache) / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(revision)
    shutil.copytree(folder, entry / "snapshots" / revision, dirs_exist_ok=True)
    return entry / "snapshots" / revision


DEFAULT_TEACHER = ("ViT-B-32", "datacomp_xl_s13b_b90k")  # the scripts' default --model/--teacher and tag


def add_teacher_to_hub_cache(cache, tiny_teacher, name=DEFAULT_TEACHER[0], tag=DEFAULT_TEACHER[1]):
    """Put the tiny CLIP's weights (`tiny_teacher`: 'local-dir:PATH' from make_tiny_teacher) into the Hugging Face
    cache `cache` under the repo and file name that open_clip's pretrained config for name + tag points at.

    open_clip still builds `name` from its built-in architecture config: swap that for TINY_TEACHER_CFG in the
    same process (the `fake_hub` fixture does), and `create_model_and_transforms(name, pretrained=tag)` runs the
    real path name + tag -> hub cache -> weights, offline. Returns the cached weights file.
    """
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME
    hub = open_clip.get_pretrained_cfg(name, tag)["hf_hub"]  # 'org/repo/' (default file name) or 'org/repo/file'
    repo, filename = os.path.split(hub)
    repo = repo if filename else hub.rstrip("/")
    staging = Path(cache) / ".staging" / repo.replace("/", "--")
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(tiny_teacher[len("local-dir:"):]) / "open_clip_pytorch_model.bin",
                    staging / (filename or HF_WEIGHTS_NAME))
    snapshot = add_to_hub_cache(cache, repo, staging)
    shutil.rmtree(Path(cache) / ".staging")
    return snapshot / (filename or HF_WEIGHTS_NAME)


def simulate_read_only(monkeypatch, folder):
    """Make creating a file or a folder at or below `folder` raise OSError(EROFS), as a read-only mount does (as
    root, chmod blocks nothing). Covers os.open and os.mkdir, which tempfile, common.atomic_write and Path.mkdir
    go through; reading stays possible."""
    root = os.path.abspath(folder)
    real_open, real_mkdir = os.open, os.mkdir

    def below(path):
        p = os.path.abspath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep)

    def refuse(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def ro_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and dir_fd is None and below(path):
            raise refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def ro_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is None and below(path):
            raise refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)
    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


def interrupted_at(n, loss):
    """`loss` that raises KeyboardInterrupt (a kill, as distill.py sees it) on its n-th call: a run stopped mid-way."""
    calls = []

    def loss_or_kill(*a):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return loss(*a)
    return loss_or_kill


def exits_with_one_line(main, argv, capsys, expect):
    """main(argv) exits with code 2 and prints exactly one line, `error: ...` containing `expect`, on stderr."""
    import pytest
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    return err[0]


def main(argv):
    usage = "usage: python tests/kit.py teacher DIR | dataset NAME ROOT | diffusion DIR"
    what, *rest = argv or [""]
    if what == "teacher" and len(rest) == 1:
        print(make_tiny_teacher(rest[0]))
    elif what == "dataset" and len(rest) == 2 and rest[0] in domains.DATASETS:
        labels = make_fake_dataset(rest[0], rest[1])
        print(f"{rest[0]}: {len(labels)} test images under {rest[1]} (zeroshot.py --dataset {rest[0]} "
              f"--data-root {rest[1]})")
    elif what == "diffusion" and len(rest) == 1:
        import kit_diffusers
        print(kit_diffusers.make_tiny_pipeline(rest[0]))
    else:
        raise SystemExit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
