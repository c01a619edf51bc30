"""Zero-shot classification of a CLIP teacher or a distilled student on a labelled image set.

The image encoder (teacher or student) embeds each image; the teacher's frozen text encoder embeds
one prompt per class and template; the class whose averaged prompt embedding is closest wins.
Metrics and the classifier follow CLIP_benchmark exactly (top-1, top-5, mean per-class recall).

Commands:
  # the teacher on the real Pets test split (torchvision downloads it into data/)
  python zeroshot.py --model ViT-B-32 --pretrained datacomp_xl_s13b_b90k --dataset pets --download
  # a student trained by distill.py (student.pt carries everything it needs)
  python zeroshot.py --model runs/pets_l2/student.pt --dataset pets --data-root data
  # on a synth.py folder or any class_name/*.jpg folder, with CLIP_benchmark's template set
  python zeroshot.py --model runs/pets_l2/student.pt --dataset data/synth/pets --templates clip_benchmark
  # the deployed ONNX classifier of export.py onnx (its classes are fixed: they must be the dataset's)
  python zeroshot.py --model runs/pets_l2/onnx/classifier.onnx --dataset pets --data-root data
  # your own labelled photos (whisk/*.jpg, ladle/*.jpg, ...) as the classes of your domain file (docs/domains.md)
  python zeroshot.py --model local-dir:runs/kitchen_l2/open_clip --dataset my_photos --domain kitchen_tools.txt
  # CPU smoke run on a few images
  python zeroshot.py --model local-dir:/path/to/tiny_clip --dataset pets --limit 64 --device cpu
  # robustness: an ImageNet-C corruption at one severity, or all 15 x 5 (corrupted once, cached for other models)
  python zeroshot.py --model runs/pets_l2/student.pt --dataset pets --corruption gaussian_noise --severity 3
  python zeroshot.py --model runs/pets_l2/student.pt --dataset pets --corruption all --severity all

Writes results/<model>_<dataset>.json (a folder dataset: results/<model>_<folder name>_folder.json) with
CLIP_benchmark's key names ({"dataset", "model", "templates", "n", "metrics": {"acc1", "acc5",
"mean_per_class_recall"}, ...}), and prints a start line and a one-line summary. --model also takes a run's last.pt
(a student still training). With --corruption: one results/<model>_<dataset>_<corruption>_s<severity>.json per
corruption and severity, which also names them.
"""
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from helpers import common, corruptions, devices, domain_file, domains, eval_data, models, onnx_export
from helpers.common import UserError, require

TEMPLATE_SETS = {"paper": domains.PAPER_TEMPLATES, "clip_benchmark": domains.CLIP_BENCHMARK_TEMPLATES}
GENERIC_TEMPLATES = domain_file.DEFAULT_TEMPLATES  # for folders that name no known dataset


@dataclass
class Args:
    """Zero-shot evaluation of an open_clip model or a distilled student.
    Every default says whose it is: the paper's, the authors' code's, or ours (and why)."""
    # model
    model: str = field(default="ViT-B-32", metadata={
        "help": "open_clip name, local-dir:PATH (e.g. a run's open_clip/), hf-hub:ORG/REPO, a student.pt / "
                "last.pt, or an export.py classifier.onnx (paper: the teacher)"})
    pretrained: Optional[str] = field(default="datacomp_xl_s13b_b90k",
                                      metadata={"help": "open_clip tag or weights file (open_clip names only) "
                                                        "(paper: the teacher's)"})
    # data
    dataset: str = field(default="pets", metadata={"help": f"{'|'.join(domains.DATASETS)}, or a folder (ours: the "
                                                           f"paper's first domain)"})
    data_root: str = field(default="data", metadata={"help": "where torchvision datasets live (ours)"})
    split: str = field(default="test", metadata={"help": "dataset split, torchvision datasets only (paper)"})
    templates: str = field(default="paper", metadata={"help": "prompt set (paper: one prompt per class)",
                                                      "choices": list(TEMPLATE_SETS)})
    download: bool = field(default=False, metadata={"help": "let torchvision download the dataset (ours: only "
                                                            "when asked)"})
    limit: Optional[int] = field(default=None, metadata={"help": "evaluate only the first N images (ours: all)"})
    domain: Optional[str] = field(default=None, metadata={
        "help": "a domain file (or a built-in dataset's name) whose classes a class_name/*.jpg --dataset folder holds:"
                " folders are matched to its class names (case, _ and spaces do not count), prompts are its templates"
                " (ours: none)"})
    allow_subset: bool = field(default=False, metadata={
        "help": "--domain: a folder may lack some of the domain's classes (all of them stay in the classifier; the "
                "result lists the missing ones) (ours: off, a missing class is an error)"})
    # common corruptions (ImageNet-C's 15, helpers/corruptions.py)
    corruption: Optional[str] = field(default=None, metadata={
        "help": f"evaluate on corrupted images: all, or one or a comma list of {', '.join(corruptions.NAMES)} "
                f"(ours: none, the clean images)"})
    severity: Optional[str] = field(default=None, metadata={
        "help": "1..5, a comma list, or all (ImageNet-C's: its mean is over all five)"})
    corruption_seed: int = field(default=0, metadata={"help": "seed of the per-image corruption seeds (ours: any "
                                                              "fixed seed)"})
    # system (ours: where and how fast it runs; amp aside, not what it measures)
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    workers: int = field(default=4, metadata={"help": "data loader processes"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda|cuda:N|mps"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast of the image tower on GPU (on CPU only "
                                                       "with ZSD_CPU_BF16=1); logits are always fp32"})
    out: Optional[str] = field(default=None, metadata={"help": "result JSON (default results/<model>_<data>.json)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing result JSON"})


# ----------------------------------------------------------------------------------------------
# class names and prompts

def resolve_classes(dataset, templates="paper", domain=None):
    """(classnames, template list) for a helpers/domains.py dataset name or an image folder.

    A synth.py folder names its dataset (or its domain's templates) and classes in synth.json; a plain
    class_name/*.jpg folder gets its sorted subfolder names (underscores read as spaces) and a generic template,
    or, with a domain_file.Domain, that domain's classes and templates.
    """
    require(templates in TEMPLATE_SETS, f"unknown template set '{templates}': use {' or '.join(TEMPLATE_SETS)}")
    if domain is not None:
        return list(domain.classnames), list(TEMPLATE_SETS[templates][domain.name] if domain.builtin else
                                             domain.templates)
    if not eval_data.is_folder_dataset(dataset):
        return list(domains.CLASSNAMES[dataset]), list(TEMPLATE_SETS[templates][dataset])
    folder = eval_data.check_folder(dataset)
    if (folder / "manifest.jsonl").is_file():
        _, classnames, info = common.load_manifest(folder)
        name = info.get("dataset")
        if name in domains.DATASETS:
            return classnames, list(TEMPLATE_SETS[templates][name])
        return classnames, list(info.get("templates") or GENERIC_TEMPLATES)
    return [c.replace("_", " ") for c in common.class_folders(folder)], list(GENERIC_TEMPLATES)


_CLASSIFIERS = {}  # in-process cache: key -> (C, D) tensor


def build_classifier(teacher, classnames, templates, device="cpu", batch_size=256):
    """Class text embeddings (C, D), built as CLIP_benchmark builds them.

    Each prompt "template.format(c=name)" is embedded by the teacher's text encoder and normalised;
    the prompts of a class are averaged and the mean normalised again. Prompts are encoded in
    batches of `batch_size` across classes (CLIP_benchmark encodes one class at a time). Cached in
    memory and on disk per (teacher weights, classnames, templates): repeated evaluations and
    distill.py runs never re-encode prompts.
    """
    key = common.fingerprint({"teacher": teacher.weights_key(), "classnames": list(classnames),
                              "templates": list(templates)})
    path = common.cache_root() / "text" / f"{key}.pt"
    if key not in _CLASSIFIERS:
        try:
            _CLASSIFIERS[key] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a missing, unreadable or damaged cache entry is rebuilt, never trusted
            pass
    if key not in _CLASSIFIERS:
        prompts = [t.format(c=c) for c in classnames for t in templates]  # class-major: (C * T,)
        model = teacher.model
        model_device = next(model.parameters()).device
        chunks = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                tokens = teacher.tokenizer(prompts[i:i + batch_size]).to(model_device)
                chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
        emb = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
        emb = F.normalize(emb.mean(dim=1), dim=-1)  # (C, D)
        _CLASSIFIERS[key] = emb
        save_cache_entry(emb, path)
    return _CLASSIFIERS[key].to(device)


def save_cache_entry(obj, path):
    """Write a cache file; a cache that cannot be written (read-only, full, a file where its folder should be)
    costs a rebuild next time, not the run: one warning line, and on we go."""
    try:
        common.save_torch(obj, path)
    except OSError as e:
        print(f"warning: cannot write the cache file {path} ({e.strerror or type(e).__name__}); continuing "
              f"without it (set XDG_CACHE_HOME to a writable folder to keep it)", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# models: a teacher (open_clip) or a student (student.pt), behind one interface

@dataclass
class ZeroShotModel:
    encoder: torch.nn.Module  # has encode_image: (B, 3, H, W) -> (B, D)
    transform: object         # PIL image -> (3, H, W) tensor
    name: str                 # short name for results files
    student_ckpt: Optional[dict] = None
    teacher: Optional[models.Teacher] = None
    onnx_meta: Optional[dict] = None  # an ONNX classifier's metadata (its class names are baked into the graph)

    def info(self):
        """What the results table needs to know about the model: kind, architecture, size, training."""
        if self.onnx_meta is not None:
            m = self.onnx_meta
            return {"kind": "student", "arch": m["timm_name"], "image_params": m["image_params"],
                    "teacher": m["teacher"], "format": "onnx"}
        params = sum(p.numel() for p in (self.encoder.visual if hasattr(self.encoder, "visual") else
                                         self.encoder).parameters())
        if self.student_ckpt is None:
            trunk = getattr(getattr(self.encoder, "visual", None), "trunk", None)  # an exported student
            if trunk is not None:  # distill.py's <run>/open_clip: the run's args.json says how it was trained
                run = Path(self.teacher.name[len("local-dir:"):]).parent / "args.json"
                args = common.read_json(run, "args.json") if run.is_file() else {}
                return {"kind": "student", "arch": getattr(trunk, "pretrained_cfg", {}).get("architecture"),
                        "teacher": self.teacher.ident, "image_params": params, "loss": args.get("loss"),
                        "data": args.get("data")}
            return {"kind": "teacher", "arch": self.teacher.name, "pretrained": self.teacher.pretrained,
                    "image_params": params}
        args = self.student_ckpt.get("args") or {}
        return {"kind": "student", "arch": self.student_ckpt["timm_name"], "image_params": params,
                "teacher": self.student_ckpt["teacher"], "loss": args.get("loss"), "data": args.get("data"),
                "train_dataset": self.student_ckpt.get("dataset"), "step": self.student_ckpt.get("step")}

    def classifier(self, classnames, templates, device, teacher=None):
        """(C, D): the student's stored text embeddings if made for exactly these prompts,
        otherwise the teacher's text encoder (loaded on demand)."""
        if self.onnx_meta is not None:  # the graph computes its own logits: it only has to be for these classes
            return onnx_export.graph_classes(self.onnx_meta, classnames, templates)
        ck = self.student_ckpt
        if ck is not None and ck.get("class_text_emb") is not None and ck.get("classnames") == list(classnames) \
                and ck.get("templates") == list(templates):
            return ck["class_text_emb"].float().to(device)
        if self.teacher is None:
            if teacher is not None and teacher.ident == (ck or {}).get("teacher", teacher.ident):
                self.teacher = teacher
            else:
                t = ck["teacher"]
                try:
                    self.teacher = models.load_teacher(t["model"], t["pretrained"], device=device)
                except UserError as e:
                    raise UserError(f"the student has no text embeddings for these classes/templates and its "
                                    f"teacher cannot be loaded: {e}") from None
        return build_classifier(self.teacher, classnames, templates, device)


def load_model(spec, pretrained=None, device="cpu"):
    """A ZeroShotModel from an open_clip name, local-dir:PATH, a distill.py student.pt or an ONNX classifier."""
    if spec.endswith(".onnx"):  # onnxruntime on the CPU; images go in as uint8, resized and cropped
        meta, encoder = onnx_export.load_encoder(spec)
        run = Path(spec).resolve().parent
        name = (run.parent.name if run.name == "onnx" else run.name) + "_" + Path(spec).stem.replace(".", "_")
        return ZeroShotModel(encoder=encoder, transform=onnx_export.uint8_transform(meta["image_size"]), name=name,
                             onnx_meta=meta)
    if spec.endswith((".pt", ".pth", ".ckpt")) or (os.path.isfile(spec) and not spec.startswith("local-dir:")):
        student, ckpt = models.load_student(spec, device=device)
        name = Path(spec).parent.name if Path(spec).name in ("student.pt", "last.pt") else Path(spec).stem
        return ZeroShotModel(encoder=student, name=name or "student", student_ckpt=ckpt,
                             transform=models.eval_transform(ckpt["image_size"], ckpt["mean"], ckpt["std"]))
    teacher = models.load_teacher(spec, pretrained, device=device)
    if spec.startswith("local-dir:"):  # a distill.py export is <run>/open_clip: name it after the run
        folder = Path(teacher.name[len("local-dir:"):])
        name = folder.parent.name if folder.name == "open_clip" else folder.name
    else:
        name = spec + (f"_{Path(teacher.pretrained).stem}" if teacher.pretrained and os.path.isfile(
            teacher.pretrained) else f"_{teacher.pretrained}" if teacher.pretrained else "")
    return ZeroShotModel(encoder=teacher.model, transform=teacher.preprocess, name=name, teacher=teacher)


# ----------------------------------------------------------------------------------------------
# the evaluation itself

def predict(model, loader, classifier, device, amp=True, progress=True):
    """Logits (N, C) = 100 * normalize(image_emb) @ classifier^T, with labels and broken indices.

    Only the image tower runs under autocast. Normalisation and logits are fp32, on the CPU: in bf16 a logit
    near 30 moves in steps of 0.125, so close classes would tie and top-1 would depend on the class order; the
    CPU also rules out TF32 matmuls (distill.py turns them on for CUDA), and (B, D) @ (D, C) is tiny.
    """
    weights = classifier.float().cpu().t().contiguous()  # (D, C), the layout CLIP_benchmark multiplies with
    all_logits, all_labels, broken = [], [], []
    with torch.inference_mode():
        for images, labels, bad in tqdm(loader, desc="zero-shot", unit="batch", disable=None if progress else True,
                                        leave=False):
            broken += bad
            if images is None:
                continue
            images = images.to(device, non_blocking=True)
            if isinstance(model, onnx_export.OnnxEncoder):  # the graph's own logits, from its class matrix
                all_logits.append(model.logits(images))  # (B, C), fp32
                all_labels.append(labels)
                continue
            with devices.autocast(device, amp):
                image_emb = model.encode_image(images)  # (B, D), bf16 under autocast
            emb = F.normalize(image_emb.float().cpu(), dim=-1)  # (B, D), fp32 from here on
            all_logits.append(100.0 * emb @ weights)  # (B, C)
            all_labels.append(labels)
    if not all_logits:
        return torch.zeros(0, classifier.shape[0]), torch.zeros(0, dtype=torch.long), broken
    return torch.cat(all_logits), torch.cat(all_labels), broken


def compute_metrics(logits, labels):
    """top-1, top-5 and mean per-class recall, the way CLIP_benchmark computes them.

    acc@k: share of images whose label is among the k highest logits (NaN for k > #classes, as
    CLIP_benchmark reports acc5 = NaN with fewer than 5 classes). Mean per-class recall: the mean,
    over classes present in `labels`, of the share of that class's images predicted correctly
    (sklearn's balanced_accuracy_score).
    """
    n, num_classes = logits.shape
    labels = labels.long()
    top = logits.topk(min(5, num_classes), dim=1).indices  # (N, k)
    hit = top.eq(labels[:, None])
    acc1 = float(hit[:, :1].sum().item()) / n
    acc5 = float(hit[:, :5].sum().item()) / n if num_classes >= 5 else float("nan")
    y_true, y_pred = labels.numpy(), top[:, 0].numpy()
    present = np.unique(y_true)
    counts = np.bincount(y_true, minlength=num_classes)[present]
    correct = np.bincount(y_true[y_true == y_pred], minlength=num_classes)[present]
    mpcr = float(np.mean(correct / counts))
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mpcr}


def evaluate(model, dataset, data_root="data", split="test", templates="paper", pretrained=None, batch_size=256,
             workers=4, device="cpu", amp=True, download=False, limit=None, subset=None, teacher=None,
             progress=True, domain=None, allow_subset=False, corruption=None, severity=None, corruption_seed=0):
    """Zero-shot evaluation; returns the results dict (CLIP_benchmark key names) without writing it.

    model: open_clip name, local-dir:PATH or student.pt path (or a ZeroShotModel); dataset: a
    helpers/domains.py name or a folder; subset: relative paths of a synth.py folder to keep; teacher: a
    loaded models.Teacher to encode prompts with (saves reloading it); domain: a domain_file.Domain whose classes
    the class_name/*.jpg folder `dataset` holds (all of them, or some with allow_subset); corruption, severity: an
    ImageNet-C corruption applied to the resized and centre-cropped images (cached, helpers/corruptions.py).
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    zs = model if isinstance(model, ZeroShotModel) else load_model(model, pretrained, device)
    zs.encoder.to(device).eval()
    classnames, template_list = resolve_classes(dataset, templates, domain)
    class_index = domain and domain_file.match_folders(common.class_folders(eval_data.check_folder(dataset)),
                                                       domain, allow_subset)  # folder name -> class index
    transform = zs.transform
    if corruption is not None:  # ImageNet-C corrupts the resized, centre-cropped image: normalising comes after
        transform, to_tensor = corruptions.split_transform(zs.transform)
    ds = eval_data.build_dataset(dataset, data_root, split, transform, download=download, subset=subset,
                                 class_index=class_index)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    images = ds
    if corruption is not None:  # corrupted once per (images, crop, corruption, severity, seed), then read
        images = corruptions.CorruptedSet(ds, transform, to_tensor, corruption, severity, corruption_seed, workers)
    classifier = zs.classifier(classnames, template_list, device, teacher=teacher)  # (C, D)
    loader = torch.utils.data.DataLoader(eval_data.SkipBroken(images), batch_size=batch_size, shuffle=False,
                                         num_workers=min(workers, devices.available_cpus()),  # more only compete
                                         collate_fn=eval_data.collate_skipping, pin_memory=device.type == "cuda")
    t0 = time.time()
    logits, labels, broken = predict(zs.encoder, loader, classifier, device, amp=amp, progress=progress)
    seconds = time.time() - t0
    base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
    paths = (eval_data.image_paths(base) or []) if broken else []  # names only for images that failed
    names = [(paths[i] if i < len(paths) else f"index {i}", reason) for i, reason in broken]
    require(len(labels) > 0, f"no readable image in {dataset}: all {len(ds)} files failed to decode (first: "
                             f"{names[0][0] if names else '?'})")
    for name, reason in names:
        print(f"warning: skipped unreadable image {name} ({reason})", file=sys.stderr)
    if broken:
        print(f"warning: skipped {len(broken)} of {len(ds)} images", file=sys.stderr)
    if not eval_data.is_folder_dataset(dataset):
        source = "real"
    else:
        source = "synthetic" if (Path(dataset) / "manifest.jsonl").is_file() else "folder"
    synth_json = Path(dataset) / "synth.json"  # a synth.py folder of a domain file names its domain
    info = common.read_json(synth_json, "synth.json") if source == "synthetic" and synth_json.is_file() else {}
    missing = sorted(set(range(len(classnames))) - set(class_index.values())) if class_index else []
    name = domain.name if domain else Path(dataset).name if eval_data.is_folder_dataset(dataset) else dataset
    result = {"dataset": name, "model": zs.name, "domain": domain.name if domain else info.get("domain"),
              "missing_classes": [classnames[i] for i in missing] or None,  # --allow-subset: the classes not evaluated
              "templates": templates, "n": len(labels), "metrics": compute_metrics(logits, labels),
              "source": source, "split": split if source == "real" else None, "skipped": len(broken),
              "num_classes": len(classnames), "model_info": zs.info(),
              "images_per_s": round(len(labels) / max(seconds, 1e-9), 2),
              "precision": "bf16" if amp and devices.autocast_dtype(device) != "fp32" else "fp32"}  # the image tower
    if corruption is not None:
        result.update(corruption=corruption, severity=severity, corruption_seed=corruption_seed,
                      corruption_cache={"read": images.cached, "path": str(images.path), "seconds": images.seconds})
    return result


def check_out(out, overwrite):
    """The result file `out` can be written: not a folder, not there unless --overwrite, its folder writable."""
    require(not out.is_dir(), f"--out {out} is a folder: pass a file path such as {out / 'result.json'}")
    require(overwrite or not out.exists(), f"{out} exists: pass --overwrite to replace it or --out elsewhere")
    common.prepare_out_dir(out.parent, "--out's folder")
    return out


def save_result(result, path):
    """Write a result dict as JSON, atomically; NaN metrics (acc5 with < 5 classes) become null."""
    clean = {**result, "metrics": {k: (None if v != v else v) for k, v in result["metrics"].items()}}
    common.save_json(clean, path)


@common.entrypoint
def main(argv=None):
    args = common.parse_args(Args, argv, description=__doc__)
    require(args.batch_size > 0, "--batch-size must be positive")
    require(args.workers >= 0, "--workers must be >= 0")
    require(args.limit is None or args.limit > 0, "--limit must be positive")
    require(not eval_data.is_folder_dataset(args.dataset) or Path(args.dataset).exists(),
            f"unknown dataset '{args.dataset}': use one of {', '.join(domains.DATASETS)} or an image folder")
    domain = None
    if args.domain:  # checked before any model loads; the folder's names are matched to it in evaluate()
        kind = "a built-in dataset" if args.dataset in domains.DATASETS else "a synth.py folder: it knows its classes"
        require(eval_data.is_folder_dataset(args.dataset) and not (Path(args.dataset) / "manifest.jsonl").exists(),
                f"--domain goes with a class_name/*.jpg folder as --dataset ({args.dataset} is {kind})")
        domain = domain_file.load_domain(args.domain, "--domain")
    require(not args.allow_subset or domain, "--allow-subset goes with --domain")
    require(args.corruption or args.severity is None, "--severity needs --corruption NAME|all")
    pairs = [(None, None)]  # (corruption, severity): clean images
    if args.corruption:
        pairs = corruptions.selection(args.corruption, args.severity or "all")
        corruptions.library()  # a missing package fails now, not after loading the model
    require(not args.out or len(pairs) == 1, f"--out names one file, and --corruption/--severity ask for {len(pairs)} "
                                             f"results: leave --out out (results/<model>_<data>_<corruption>_s<N>"
                                             f".json)")
    device = devices.pick_device(args.device)
    # a result that cannot be written fails now, not after the evaluation
    out = check_out(Path(args.out), args.overwrite) if args.out else None
    zs = load_model(args.model, args.pretrained, device)
    # a folder named like a dataset (data/synth/pets) is not its real test split: its results get another name
    data_name = f"{Path(args.dataset).name}_folder" if eval_data.is_folder_dataset(args.dataset) else args.dataset
    data_name = domain.name if domain else data_name  # your photos of a domain: its name
    names = [f"results/{zs.name}_{data_name}" + (f"_{c}_s{s}" if c else "") + ".json" for c, s in pairs]
    outs = [out] if out else [check_out(Path(name), args.overwrite) for name in names]
    print(f"zero-shot | model {zs.name} | dataset {args.dataset} | templates {args.templates} | device {device}")
    results = []
    for (name, severity), out in zip(pairs, outs):
        result = evaluate(zs, args.dataset, data_root=args.data_root, split=args.split, templates=args.templates,
                          batch_size=args.batch_size, workers=args.workers, device=device, amp=args.amp,
                          download=args.download, limit=args.limit, domain=domain, allow_subset=args.allow_subset,
                          corruption=name, severity=severity, corruption_seed=args.corruption_seed)
        save_result(result, out)
        m, cache = result["metrics"], result.get("corruption_cache")
        if cache:
            print(f"corruption cache: {'read' if cache['read'] else 'built'} {cache['path']} ({cache['seconds']:.1f}s)")
        print(f"{result['dataset']}{f' | {name} {severity}' if name else ''} | {zs.name} | n {result['n']} | acc1 "
              f"{100 * m['acc1']:.2f} | acc5 {100 * m['acc5']:.2f} | mean per-class recall "
              f"{100 * m['mean_per_class_recall']:.2f} | {result['images_per_s']:.1f} img/s | {out}")
        results.append(result)
    return results[0] if len(results) == 1 else results


if __name__ == "__main__":
    main()
