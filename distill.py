"""Distil a CLIP image encoder into a small timm student, on synthetic images of one domain.

The method (Popp, Metzen, Hein 2024, "Zero-Shot Distillation for Image Encoders"): a frozen CLIP teacher
classifies zero-shot by comparing an image embedding with text embeddings of class prompts. We train a small
student (timm encoder + nn.Linear into the teacher's embedding space) to stand in for the teacher's *image*
encoder, using only synthetic images (synth.py). The teacher's text encoder stays the classifier. Losses:
  l2           ||s - t|| between the student's and the teacher's embedding of the same view (the paper's method)
  contrastive  InfoNCE between the student's embedding and the teacher's text embedding of the image's prompt
               (--text caption, default) or class prompt (--text class): the baseline that fails on real images,
               as it learns synthetic-only cues
  mix          (1 - alpha) * l2 + alpha * contrastive

Commands:
  # CPU smoke run (docs/distill.md): the tests' tiny random teacher and a synth.py smoke folder
  python tests/kit.py teacher /tmp/tiny_clip
  python distill.py --data /tmp/synth/pets --teacher local-dir:/tmp/tiny_clip --student test_efficientnet \
      --batch-size 16 --steps 30 --views 2 --workers 0 --device cpu --holdout 0.1 --out /tmp/runs/smoke
  # one GPU, the paper's stage 3 (96 epochs, batch 256, L2), starting from a stage-1 student
  python distill.py --loss l2 --data data/synth/pets --init runs/stage1/student.pt --eval-root data \
      --holdout 0.05 --out runs/pets_l2
  # stage 1: generic real images from webdataset shards, streamed once with the teacher online
  python distill.py --data 'shards/{00000..00099}.tar' --steps 40000 --out runs/stage1
  # a read-only (shared) data folder: the image store and the teacher cache go to --cache-dir instead of <data>/cache
  python distill.py --data /shared/synth/pets --cache-dir ~/.cache/zsd --out runs/pets_l2
  # the contrastive baseline (the authors' code used --temperature 1)
  python distill.py --loss contrastive --data data/synth/pets --out runs/pets_contrastive
  # several GPUs: --batch-size stays the global batch
  torchrun --nproc_per_node=4 distill.py --loss l2 --data data/synth/pets --out runs/pets_l2_ddp
  # continue a stopped run exactly where it stopped: its own command plus --resume (or a larger --epochs/--steps)
  python distill.py --loss l2 --data data/synth/pets --init runs/stage1/student.pt --eval-root data \
      --holdout 0.05 --out runs/pets_l2 --resume

Writes <out>/open_clip/ (the student as an open_clip model: `open_clip.create_model_and_transforms(
"local-dir:<out>/open_clip")`), student.pt (self-contained, for zeroshot.py and --init), last.pt (resume state),
args.json, log.jsonl and, with --eval-root / --holdout, eval_<dataset>.json / eval_holdout.json.
"""
import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

import export
import zeroshot
from helpers import common, devices, models, run_state, shards, views
from helpers.common import UserError


@dataclass
class Args:
    """Zero-shot distillation of a CLIP image encoder into a small student (l2 | contrastive | mix).
    Every default says whose it is: the paper's, the authors' code's, or ours (and why)."""
    # data
    data: str = field(default="data/synth/pets", metadata={
        "help": "synth.py folder (labels from manifest.jsonl), any image folder (no labels: --loss l2 only), or "
                "webdataset shards 'shards/{00000..00099}.tar' (stage 1: streamed, teacher online, --steps) "
                "(ours: synth.py's default output)"})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "helpers/domains.py class set for the text embeddings and --eval-root (ours: synth.json's dataset)"})
    views: int = field(default=8, metadata={"help": "K: augmented views per image in the teacher cache (ours: "
                                                    "1/12 of the teacher work of fresh views over 96 epochs)"})
    cache: bool = field(default=True, metadata={
        "help": "--no-cache: run the teacher online on fresh augmentations (the authors' code; ours: the cache)"})
    cache_seed: int = field(default=0, metadata={"help": "seed of the cached views, independent of --seed (ours)"})
    crop_scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata={
        "help": "RandomResizedCrop area range (authors' code: torchvision's default, which their crop uses)"})
    store_size: int = field(default=288, metadata={
        "help": "R: the image store keeps every training image decoded at R x R, at most its own size (ours: room "
                "above the 224 px crops; Pets takes 2.3 GB)"})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "folder for the image store and the teacher cache (in a subfolder per data folder), e.g. when the data "
                "folder is read-only; None: <data>/cache, where every run on the folder finds them (ours)"})
    image_size: int = field(default=0, metadata={
        "help": "student input size; 0: the teacher's resolution (authors' code: 224, the teacher's)"})
    holdout: float = field(default=0.0, metadata={
        "help": "share of synthetic images kept out of training, evaluated at the end: the synthetic-to-real gap "
                "(ours: off, every image trains)"})
    eval_root: Optional[str] = field(default=None, metadata={
        "help": "torchvision data root: evaluate on --dataset's real test split at the end, checked at the start "
                "(ours: off; the authors' code evaluated every epoch)"})
    # model
    teacher: str = field(default="ViT-B-32", metadata={"help": "open_clip name, local-dir:PATH or hf-hub:ORG/REPO "
                                                               "(paper)"})
    teacher_pretrained: Optional[str] = field(default="datacomp_xl_s13b_b90k", metadata={"help": "tag/file (paper)"})
    student: str = field(default="tiny_vit_11m_224", metadata={"help": "timm model name (authors' code)"})
    student_pretrained: bool = field(default=False, metadata={
        "help": "start the encoder from timm's weights (authors' code: off)"})
    init: Optional[str] = field(default=None, metadata={
        "help": "start from this student.pt / last.pt (ours: none; the paper starts stage 3 from stage 1's)"})
    # optimization
    loss: str = field(default="l2", metadata={"help": "distillation loss (paper)",
                                              "choices": ["l2", "contrastive", "mix"]})
    alpha: float = field(default=0.5, metadata={"help": "mix: (1 - alpha) * l2 + alpha * contrastive (ours: even)"})
    temperature: float = field(default=0.01, metadata={"help": "contrastive tau (ours: CLIP's 0.01; authors' code: 1)"})
    text: str = field(default="caption", metadata={
        "help": "contrastive text: each image's own prompt from manifest.jsonl (caption) or its class prompt (class) "
                "(authors' code: their example run)", "choices": ["caption", "class"]})
    epochs: int = field(default=96, metadata={"help": "passes over the training images (authors' code)"})
    steps: int = field(default=0, metadata={"help": "optimizer steps; overrides --epochs when > 0 (ours)"})
    batch_size: int = field(default=256, metadata={"help": "global batch, split across torchrun ranks (authors' code)"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate (authors' code)"})
    schedule: str = field(default="constant", metadata={"help": "lr after warm-up (authors' code: constant)",
                                                        "choices": ["constant", "cosine"]})
    warmup: int = field(default=0, metadata={"help": "linear warm-up steps (authors' code: none)"})
    # system (ours: they change where and how fast a run goes, not what it learns)
    out: Optional[str] = field(default=None, metadata={"help": "run folder; None: runs/<data folder>_<loss>_<student>"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/last.pt"})
    seed: int = field(default=0, metadata={"help": "student init, data order, fresh augmentations"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda|cuda:N|mps"})
    workers: int = field(default=8, metadata={"help": "processes that decode the images into the store once; "
                                                      "stage 1: shard loader processes per rank"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the student (off: compiling costs minutes)"})
    channels_last: bool = field(default=False, metadata={
        "help": "student weights and inputs in channels_last (NHWC) memory: faster convolutions for CNN students on "
                "CPUs and on GPUs under bf16; nothing to gain for ViTs (off: the default student is a ViT)"})
    save_every: int = field(default=500, metadata={"help": "write last.pt every N steps (and at the end)"})
    log_every: int = field(default=50, metadata={"help": "one log line every N steps"})


# ----------------------------------------------------------------------------------------------
# the losses: pure functions of unnormalised embeddings

def l2_loss(student_emb, teacher_emb):
    """Mean over the batch of ||s - t||_2 between unit vectors, not squared (authors' code). (B, D), (B, D) -> ()"""
    s, t = F.normalize(student_emb, dim=-1), F.normalize(teacher_emb, dim=-1)
    return (s - t).norm(dim=-1).mean()


def contrastive_loss(student_emb, text_emb, rows, temperature):
    """Symmetric InfoNCE between image i and its text: row rows[i] of a table of text embeddings, either the class
    prompts (--text class: same-class images share a prompt and are false negatives of each other) or each image's
    own diffusion prompt (--text caption, the authors' run). (B, D), (T, D), (B,) -> ()"""
    s = F.normalize(student_emb, dim=-1)  # (B, D)
    u = F.normalize(text_emb, dim=-1)[rows]  # (B, D): one text row per image
    logits = s @ u.t() / temperature  # (B, B): image i against the text of every image in the batch
    target = torch.arange(len(s), device=s.device)  # the match is on the diagonal
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def mix_loss(student_emb, teacher_emb, text_emb, rows, temperature, alpha):
    """(1 - alpha) * l2 + alpha * contrastive: alpha 0 is pure L2, alpha 1 pure contrastive (the authors' convention).
    (B, D), (B, D), (T, D), (B,) -> ()"""
    return ((1 - alpha) * l2_loss(student_emb, teacher_emb)
            + alpha * contrastive_loss(student_emb, text_emb, rows, temperature))


LOSSES = {  # --loss -> f(student_emb, teacher_emb, text_emb, rows, temperature, alpha)
    "l2": lambda s, t, u, rows, tau, alpha: l2_loss(s, t),
    "contrastive": lambda s, t, u, rows, tau, alpha: contrastive_loss(s, u, rows, tau),
    "mix": mix_loss,
}


# ----------------------------------------------------------------------------------------------
# the training views
#
# A view of an image is a RandomResizedCrop box plus a horizontal flip (views.draw_views). With the teacher cache
# (the default) the views are drawn once, K per image, and the teacher embeds each once: (N, K, D) fp16 in
# <data>/cache/. Each epoch then picks one cached view per image; the loader renders that same box and flip for
# the student, so the cached target is the teacher's embedding of exactly the pixels the student sees, and the
# teacher never runs in the loop. With --no-cache the views are fresh each epoch and the teacher runs online on
# them (at its own resolution when the student's differs). Stage 1 streams shards: always online.

def training_batches(plan, teacher, cache, resolution, device, dist):
    """Batches ([student crops, teacher crops if the teacher runs online at another resolution], image index,
    view index) for steps plan.start..plan.total-1 of this rank, on `device`."""
    resolutions = [resolution] if cache is not None or resolution == teacher.image_size \
        else [resolution, teacher.image_size]
    if plan.stage1:
        return shards.ShardBatches(plan.images.paths, resolutions, teacher, plan.args, dist, plan.start, plan.total,
                                   device.type == "cuda")
    epoch_views = functools.partial(views.epoch_views, seed=plan.args.seed, train_idx=plan.train_idx, cache=cache,
                                    image_sizes=plan.images.image_sizes, scale=plan.args.crop_scale)
    batches = views.step_batches(epoch_views, plan.start, plan.total, plan.steps_per_epoch, plan.args.batch_size, dist)
    return (([views.render_views(plan.images, idx, boxes, flips, s, teacher.mean, teacher.std, device)
              for s in resolutions], idx, view)  # (b, 3, S, S) each: gathered from the store, cropped on the device
            for idx, view, boxes, flips in batches)


def text_targets(images, teacher, classnames, templates, args, device):
    """(class_text_emb (C, D) or None, text_emb (T, D), text_rows (N,)): the class prompts' embeddings (the
    classifier student.pt carries), and the table the contrastive term compares with plus each image's row in it:
    each image's own prompt (--text caption: T = N, row i) or its class prompt (--text class: T = C, its label).
    One text-embedding function, zeroshot.build_classifier (a caption is a class of one prompt, template "{c}"),
    which caches its result on disk per teacher and prompt list."""
    class_text_emb = zeroshot.build_classifier(teacher, classnames, templates, device=device) if classnames else None
    if args.loss != "l2" and args.text == "caption":
        caption_emb = zeroshot.build_classifier(teacher, images.prompts, ["{c}"], device=device)  # (N, D)
        return class_text_emb, caption_emb, torch.arange(len(images.paths), device=device)
    return class_text_emb, class_text_emb, images.labels.to(device) if images.labels is not None else None


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


def make_optimizer(model, lr, device, fused=True):
    """AdamW with betas (0.9, 0.98), eps 1e-6, no weight decay (authors' code). fused (CPU and CUDA): one kernel
    updates every parameter, instead of a loop of small ops per parameter (bench.py train measures both)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0,
                             fused=fused and device.type in ("cpu", "cuda"))


def lr_at(step, args, total):
    """The learning rate of step `step` (0-based) of `total`: linear warm-up over --warmup steps to --lr, then --lr
    (constant, the authors' code) or a cosine decay to 0 at `total` (--schedule cosine)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, total - args.warmup)))
    return args.lr


def checkpoint(model, optimizer, step, plan, device, log):
    """last.pt: the unwrapped student (under "state_dict", as in student.pt), the optimizer, every random stream and
    the log's position (the step of its last line and the loss summed since), enough to continue bit for bit,
    log.jsonl included."""
    return {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "total": plan.total,
            "log": log,
            "epoch": step // plan.steps_per_epoch, "timm_name": plan.args.student,
            "rng": run_state.rng_state(device), "data": {"images": plan.images.digest, "train": len(plan.train_idx)},
            "args": dataclasses.asdict(plan.args)}


def describe_run(plan, teacher, model, resolution, dist):
    """The start line (what trains on what, for how long, where) and the images that were skipped."""
    args, images, device = plan.args, plan.images, dist.device
    data = (f"{len(images.paths)} shards, streamed" if plan.stage1 else
            f"{len(images.paths)} images ({len(plan.train_idx)} train, {len(plan.holdout)} held out)")
    print(f"distill | {args.loss} | teacher {teacher.name} ({teacher.pretrained}) -> student {args.student} "
          f"{resolution}px, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {data} | "
          f"{plan.total} steps of {args.batch_size} | device {device} {devices.autocast_dtype(device)} | "
          f"world {dist.world_size}")
    for path, reason in images.skipped:
        print(f"warning: skipped undecodable image {images.root / path} ({reason})", file=sys.stderr)
    if images.skipped:
        print(f"warning: skipped {len(images.skipped)} undecodable images of {images.root}", file=sys.stderr)


def report_stream(plan, step, bad, dist):
    """Stage 1: samples and undecodable samples of the whole run (a resumed run fast-forwards), to stream.json."""
    if dist.is_main:
        samples = step * plan.args.batch_size
        print(f"stream: {samples} samples in {step} steps; skipped {bad} undecodable samples")
        common.save_json({"samples": samples, "skipped": bad, "steps": step, "shards": len(plan.images.paths)},
                         plan.out / "stream.json")


def save_student(plan, model, teacher, classnames, templates, class_text_emb, step):
    """student.pt (self-contained: zeroshot.py, --init) and open_clip/, the release format: the student as image
    tower with the teacher's text tower. A student open_clip cannot build is one warning; student.pt still serves."""
    out = plan.out
    common.save_torch(models.student_checkpoint(
        model, teacher, classnames=classnames, templates=templates, dataset=plan.dataset,
        class_text_emb=class_text_emb, extra={"args": dataclasses.asdict(plan.args), "step": step}), out / "student.pt")
    print(f"wrote {out / 'student.pt'} (step {step})")
    try:
        export.export_open_clip(model, teacher, out / "open_clip", overwrite=True)  # prints what it wrote
    except UserError as e:  # e.g. a ViT at a size open_clip's timm tower cannot build
        print(f"warning: no open_clip export: {e}", file=sys.stderr)


def evaluate_run(plan, teacher, device):
    """Zero-shot accuracy of the final student.pt on --dataset's real test split (--eval-root) and on the held-out
    synthetic images (--holdout): the synthetic-to-real gap. Once, at the end: never used to pick a checkpoint."""
    out, args, evaluations = plan.out, plan.args, []
    if args.eval_root:
        evaluations.append((f"eval_{plan.dataset}.json", plan.dataset, {"data_root": args.eval_root}))
    if plan.holdout:
        evaluations.append(("eval_holdout.json", str(plan.images.root),
                            {"subset": [plan.images.paths[i] for i in plan.holdout]}))
    for filename, eval_set, kw in evaluations:
        result = zeroshot.evaluate(str(out / "student.pt"), eval_set, teacher=teacher, device=device,
                                   workers=args.workers, progress=False, **kw)
        zeroshot.save_result(result, out / filename)
        print(f"{filename[5:-5]} | n {result['n']} | acc1 {100 * result['metrics']['acc1']:.2f} | "
              f"mean per-class recall {100 * result['metrics']['mean_per_class_recall']:.2f} | {out / filename}")


# ----------------------------------------------------------------------------------------------

@common.entrypoint
def main(argv=None):
    args = common.parse_args(Args, argv, description=__doc__)
    dist = devices.setup_distributed(args.device)
    device = dist.device
    plan = run_state.plan_run(args, dist)  # every check and derived value, before anything is written
    args, images, out = plan.args, plan.images, plan.out

    # the frozen teacher, the student, and the class prompts (for the contrastive loss and evaluation)
    teacher = models.load_teacher(args.teacher, args.teacher_pretrained, device=device)
    teacher.model.eval().requires_grad_(False)  # frozen: only ever run under no_grad
    resolution = args.image_size or teacher.image_size
    common.seed_everything(args.seed)
    model = models.build_student(args.student, teacher.embed_dim, image_size=resolution,
                                 pretrained=args.student_pretrained)
    if args.init:
        run_state.load_init(model, args.init)
    classnames = templates = None
    if plan.dataset or images.classnames:
        classnames, templates = zeroshot.resolve_classes(plan.dataset or str(images.root), "paper")
        common.require(images.classnames is None or images.classnames == classnames,
                       f"{images.root}'s classnames (synth.json) differ from --dataset {plan.dataset}'s: pass the "
                       f"matching --dataset or none")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if dist.is_main:
        common.save_json(dataclasses.asdict(args), out / "args.json")  # the first file a run writes
        describe_run(plan, teacher, model, resolution, dist)

    # the targets: the teacher's embeddings of K views per image (the teacher cache: built once per folder and
    # teacher, reused by every run), and the text embeddings of the class prompts and captions
    cache = views.prepare_cache(images, teacher, args, dist, device) if args.cache else None
    cache_emb = cache["emb"].to(device) if cache is not None else None  # (N, K, D) fp16
    class_text_emb, text_emb, text_rows = text_targets(images, teacher, classnames, templates, args, device)

    # the student, its optimizer, and the state of a resumed run
    model = devices.sync_batchnorm(model, dist).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, args.lr, device)
    if plan.state is not None:
        model.load_state_dict(plan.state["state_dict"])
        optimizer.load_state_dict(plan.state["optimizer"])
        run_state.set_rng_state(plan.state["rng"], device)
    wrapped_model = model  # what the loop calls: DDP and torch.compile wrap `model`, which checkpoints save plain
    if dist.enabled:
        wrapped_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:  # after DDP, as torch documents, so that gradient communication overlaps the backward
        wrapped_model = torch.compile(wrapped_model)
    loader = training_batches(plan, teacher, cache, resolution, device, dist)
    if dist.is_main and args.resume:
        run_state.trim_log(out / "log.jsonl", plan.start)

    # the training loop
    model.train()
    loss_fn = LOSSES[args.loss]
    last_saved, t_log, step = plan.start, time.time(), plan.start
    position = (plan.state or {}).get("log") or {"step": plan.start, "loss_sum": 0.0}  # a resumed run's log goes on
    last_log, loss_sum = position["step"], position["loss_sum"]
    width = max(5, len(str(plan.total)))
    # idx: (b,) image indices (stage 1: sample keys); view: (b,) cached view index of each (stage 1: None)
    for step, (crops, idx, view) in enumerate(loader, start=plan.start + 1):  # step = steps done after this one
        lr = lr_at(step - 1, args, plan.total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = crops[0].to(device, non_blocking=True)  # (b, 3, S, S): this rank's share of the global batch
        x = x.contiguous(memory_format=memory_format)
        if cache_emb is not None:
            # the teacher's embedding of exactly this crop, computed once when the cache was built
            t_emb = cache_emb[idx.to(device), view.to(device)].float()  # (b, D)
        else:
            with torch.no_grad(), devices.autocast(device):  # the teacher online, on the same view
                # crops[-1]: the teacher's crop (crops[0] itself when both models take the same resolution)
                t_emb = teacher.model.encode_image(crops[-1].to(device, non_blocking=True)).float()  # (b, D)
        with devices.autocast(device):
            s_emb = wrapped_model(x).float()  # (b, D)
        rows = text_rows[idx.to(device)] if text_rows is not None else None  # (b,): each image's row of text_emb
        # every rank computes the loss of the global batch (the contrastive term needs all negatives), but its
        # gradient reaches only this rank's part; DDP averages the gradients over ranks, so multiplying by
        # world_size gives each parameter the gradient of the global loss, as one process would compute it
        loss = loss_fn(gather_batch(s_emb, dist), gather_batch(t_emb, dist), text_emb,
                       gather_batch(rows, dist) if rows is not None else None, args.temperature, args.alpha)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise UserError(f"loss is {loss_value} at step {step}: stopped; last good checkpoint "
                            + (f"{out / 'last.pt'} (step {last_saved})" if last_saved else "none (nothing saved)"))
        optimizer.zero_grad(set_to_none=True)
        (loss * dist.world_size).backward()
        optimizer.step()
        loss_sum += loss_value
        if step % args.log_every == 0 or step == plan.total:
            n_steps = step - last_log
            rate = n_steps * args.batch_size / (time.time() - t_log)
            rec = {"step": step, "epoch": (step - 1) // plan.steps_per_epoch + 1, "loss": loss_sum / n_steps,
                   "lr": lr, "img_per_s": round(rate, 2)}
            if dist.is_main:
                print(f"step {step:0{width}d}/{plan.total:0{width}d} | epoch {rec['epoch']} | "
                      f"loss {rec['loss']:.4f} | lr {lr:.1e} | {rate:.0f} img/s", flush=True)
                common.append_jsonl(rec, out / "log.jsonl")
            last_log, loss_sum, t_log = step, 0.0, time.time()
        if step % args.save_every == 0 and step < plan.total:
            if dist.is_main:
                common.save_torch(checkpoint(model, optimizer, step, plan, device,
                                             {"step": last_log, "loss_sum": loss_sum}), out / "last.pt")
            last_saved = step

    # the end: last.pt, the student (student.pt and the open_clip folder), evaluation
    if plan.stage1:
        report_stream(plan, step, loader.count_skipped(device), dist)
    if dist.enabled:
        torch.distributed.barrier()
    if dist.is_main:
        common.save_torch(checkpoint(model, optimizer, step, plan, device, {"step": last_log, "loss_sum": loss_sum}),
                          out / "last.pt")
        save_student(plan, model, teacher, classnames, templates, class_text_emb, step)
        evaluate_run(plan, teacher, device)
    devices.cleanup_distributed()
    return out


if __name__ == "__main__":
    main()
