"""A distill.py run before and between its steps: every check and derived value (`plan_run`), resume state
(essential arguments, RNG streams, the log), and loading a starting checkpoint (`load_init`).

`plan_run` is called before anything is written: a bad flag, a missing folder or a run folder that does not fit
is one `error:` line, and the run folder stays as it was. The parsed Args are never changed afterwards; the
values derived from them (resolved paths, the step count, the held-out images) live in the returned Plan.
"""
import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from helpers import common, eval_data, models, run_lock, shards, views
from helpers.common import UserError, require

# args that change the trajectory: --resume refuses to continue when one differs
ESSENTIAL = ("data", "dataset", "views", "cache", "cache_seed", "crop_scale", "store_size", "image_size", "holdout",
             "teacher", "teacher_pretrained", "student", "student_pretrained", "init", "loss", "alpha", "temperature",
             "text", "batch_size", "lr", "schedule", "warmup", "seed")
DEFAULTS_BEFORE = {"text": "class", "store_size": 288}  # what a run started before an essential arg existed did
CHECKPOINT_KEYS = ("state_dict", "optimizer", "step", "total", "rng", "data", "args")  # what --resume reads of last.pt


@dataclass
class Plan:
    args: object                 # Args with paths resolved (what args.json and last.pt record)
    stage1: bool                 # --data names webdataset shards: streamed once, teacher online
    images: views.ImageSet
    dataset: Optional[str]       # helpers/domains.py class set for text embeddings and --eval-root
    out: Path
    holdout: list                # indices of held-out synthetic images
    train_idx: torch.Tensor      # (n_train,) indices of training images
    steps_per_epoch: int
    total: int                   # optimizer steps of the whole run
    state: Optional[dict]        # last.pt when resuming, else None
    start: int                   # steps already done


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
    require(args.image_size == 0 or args.image_size >= 16, "--image-size must be >= 16 (pixels), or 0: the "
                                                           "teacher's resolution")
    require(args.store_size >= 16, "--store-size must be >= 16 (pixels)")
    import timm
    require(timm.is_model(args.student), f"unknown timm model '{args.student}' (--student): see timm.list_models(), "
                                         f"e.g. tiny_vit_11m_224")
    models.resolve_teacher(args.teacher, args.teacher_pretrained)  # names, tags, a local-dir: with its weights


def plan_run(args, dist):
    """Every check and derived value of a run, before anything is written. The run folder is locked (rank 0) before
    the checks that read it, and stays locked while this process runs; a refusal after that leaves it as it was."""
    check_args(args)
    require(args.batch_size % dist.world_size == 0,
            f"--batch-size {args.batch_size} must split evenly across {dist.world_size} ranks")
    stage1 = shards.is_shards(args.data)
    root = shards.load_shards(args.data).root if stage1 else Path(args.data).expanduser().resolve()
    require(stage1 or root.is_dir(), f"--data {args.data} does not exist: pass a synth.py output folder or an image "
                                     f"folder")
    labelled = not stage1 and (root / "manifest.jsonl").is_file()  # the labels come from synth.py's manifest
    require(stage1 or args.loss == "l2" or labelled,
            f"--loss {args.loss} needs class labels, but {root} has no manifest.jsonl (a plain image folder): use "
            f"--loss l2 or a synth.py folder")
    require(stage1 or args.holdout == 0 or labelled, "--holdout needs a synth.py folder (labels)")
    out = Path(args.out or f"runs/{root.name}_{args.loss}_{args.student}").expanduser().resolve()
    common.prepare_out_dir(out, create=False)  # a folder we can write, else one line
    lock = run_lock.lock_run_folder(out) if dist.is_main else None  # one writer: a second run is refused here
    try:
        if dist.is_main:
            run_lock.remove_stale_temps(out)  # a killed writer's temp files: no live writer holds them (we lock)
        state = load_resume_state(out, args, root) if args.resume else None
        require(args.resume or not out.exists() or not any(map(run_lock.is_run_file, out.iterdir())),
                f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        return plan_images(args, dist, stage1, out, state)
    except BaseException:
        if lock is not None:
            lock.release(undo=True)  # and the folder, when this run created it
        raise


def plan_images(args, dist, stage1, out, state):
    """The rest of plan_run: the images (decoded once into the store) and what depends on them."""
    images = shards.load_shards(args.data) if stage1 else views.load_images(args.data, args.store_size, args.workers,
                                                                              dist, args.cache_dir)
    if stage1:
        require(args.loss == "l2", f"--loss {args.loss} on shards: stage 1 uses the L2 loss (captions are unused)")
        require(args.steps > 0, "shards are streamed: give the length of the run as --steps N (one pass: "
                                "samples / --batch-size)")
        require(args.holdout == 0, "--holdout needs a synth.py folder, not shards")
        require(len(images.paths) >= dist.world_size * max(1, args.workers),
                f"{len(images.paths)} shards cannot feed {dist.world_size} ranks x {max(1, args.workers)} loader "
                f"processes (--workers): use more shards or fewer workers")
    args = resolved(args, stage1, images.root)
    dataset = args.dataset or images.dataset
    require(args.loss == "l2" or args.text == "class" or (images.prompts and all(images.prompts)),
            f"--loss {args.loss} --text caption needs each image's prompt, but {images.root}/manifest.jsonl has "
            f"none for some images: pass --text class (the class prompts)")
    require(args.eval_root is None or dataset, "--eval-root needs --dataset NAME (the real test split to use)")
    if args.eval_root:  # evaluated after the last step: a missing test split is found now, not then
        eval_data.check_split(dataset, args.eval_root)
    n = 0 if stage1 else len(images.paths)
    perm = torch.randperm(n, generator=views.seeded_generator("holdout", args.seed))
    n_hold = round(args.holdout * n)
    require(args.holdout == 0 or 0 < n_hold < n, f"--holdout {args.holdout} of {n} images leaves no image out or in")
    holdout, train_idx = perm[:n_hold].sort().values.tolist(), perm[n_hold:].sort().values
    require(stage1 or len(train_idx) >= args.batch_size, f"--batch-size {args.batch_size} is larger than the "
                                                         f"{len(train_idx)} training images: lower it")
    # the last partial batch of an epoch is dropped; a stream has no epochs (log lines say epoch 1)
    steps_per_epoch = args.steps if stage1 else len(train_idx) // args.batch_size
    total = args.steps or args.epochs * steps_per_epoch
    data = {"images": images.digest, "train": len(train_idx)}
    require(state is None or state["data"] == data, f"--resume: the images in {args.data} changed since {out} "
                                                    f"was started")
    require(state is None or args.schedule != "cosine" or state["total"] == total,
            f"--resume: the cosine schedule was set for {state and state['total']} steps; keep --steps/--epochs")
    return Plan(args, stage1, images, dataset, out, holdout, train_idx, steps_per_epoch, total, state,
                state["step"] if state else 0)


def resolved(args, stage1, root):
    """Args with the resolved values that args.json records and --resume compares."""
    return dataclasses.replace(args, crop_scale=tuple(args.crop_scale), cache=args.cache and not stage1,
                               data=args.data if stage1 else str(root),
                               init=str(Path(args.init).expanduser().resolve()) if args.init else None)


def essential(saved):
    return json.loads(json.dumps({k: saved.get(k, DEFAULTS_BEFORE.get(k)) for k in ESSENTIAL}))  # tuples -> lists


def load_resume_state(out, args, root):
    """last.pt of the run in `out` after checking that this command continues it (its images are checked once
    they are loaded). A run killed before its first checkpoint has only args.json: it is checked the same way and
    starts again at step 0 (returns None)."""
    last, saved_args = out / "last.pt", out / "args.json"
    require(last.is_file() or saved_args.is_file(),
            f"--resume: nothing to resume, {out} holds neither last.pt nor args.json")
    state = None
    if last.is_file():
        try:
            state = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as e:
            raise UserError(f"--resume: {last} is not readable ({type(e).__name__})") from None
        if isinstance(state, dict) and "model" in state:  # older last.pt: its weights under "model"
            state["state_dict"] = state.pop("model")
        missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else CHECKPOINT_KEYS
        require(not missing and isinstance(state["args"], dict), f"--resume: {last} is not a distill.py last.pt "
                f"(it lacks {', '.join(missing) or 'args'}): remove it to start again from step 0 (args.json stays)")
        saved = essential(state["args"])
    else:
        saved = essential(common.read_json(saved_args, "args.json", keys=ESSENTIAL))
    now = essential(dataclasses.asdict(resolved(args, shards.is_shards(args.data), root)))
    diff = [f"--{k.replace('_', '-')} {saved[k]} (now {now[k]})" for k in ESSENTIAL if saved[k] != now[k]]
    require(not diff, f"--resume: {out} was started with {', '.join(diff)}; essential args must match "
                      f"(use another --out for a new run)")
    return state


def trim_log(path, start):
    """Forget the log lines of steps that a resumed run will redo (all of them when it starts again at 0)."""
    kept = [ln for _, ln in common.read_jsonl(path, "log") if ln["step"] <= start] if path.is_file() else []
    with common.atomic_write(path, "w") as f:
        f.write("".join(json.dumps(ln) + "\n" for ln in kept))


def rng_state(device):
    """Every random stream a training step may draw from. CUDA: this rank's device only, so a run resumes on a
    machine with another number of GPUs."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by get_rng_state_all() before: the state of this rank's device
        cuda = cuda[device.index or 0] if cuda and device.type == "cuda" and (device.index or 0) < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


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
