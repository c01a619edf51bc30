"""The one-call GPU check (`bench.py gpu`): offline, random weights at the real sizes, about 8 minutes on one
H100/H200. It confirms that the GPU paths run and measures the numbers the cost estimates need.

  HF_HUB_OFFLINE=1 python bench.py gpu --out gpu_check         # one GPU, the real sizes
  python bench.py gpu --tiny --device cpu --out /tmp/gpu_tiny  # tiny models, the same code paths

Parts, in this order, the cheapest and most telling first (budget on one H100/H200 in brackets; the packages each
needs beyond torch and torchvision); each records its own failure, so one failing part keeps the others' numbers:
  zeroshot  [ 30 s; open_clip] ViT-B-32 through zeroshot.predict: img/s with the bf16-autocast tower and in fp32,
            their top-1 agreement on random images and a random classifier, and whether the logits are in fp32
  student   [ 60 s; timm] tiny_vit_11m_224 training steps alone (no teacher), 224 px, batch 256, bf16, fused AdamW,
            crops rendered by roi_align: eager and torch.compile + channels_last, the compile apart from the steps
  stage3    [ 90 s; timm, open_clip] distill.main, 200 steps of batch 256 (--tiny: 40 of 8) on a generated
            synth.py-format folder, the ViT-B-32 random teacher saved as a local-dir folder: the loss falls, no NaN
  synth     [150 s; diffusers, transformers, open_clip] SD-1.5's UNet, VAE and text encoder built from their
            published configs, fp16, LCMScheduler, loaded by synth.load_generator; img/s of the pipeline call synth.py
            makes (6 steps, 512 px; without its latents hook and NaN check) at batch 8 and 16, then synth.py itself
            end to end on 37 Pets prompts
  distill   [180 s; timm, open_clip] ViT-B-32 teacher -> tiny_vit_11m_224 student, 224 px, batch 256, bf16: training
            step img/s (cached, student only, --no-cache) eager, channels_last, torch.compile + channels_last; the
            teacher cache build, the image store build and the data path (bench_timing.bench_train)
A part whose package is missing is skipped (gpu.json's versions say "not installed"), the others run. One --deadline
(default 540 s: a host that cuts a command at 10 minutes, with a minute for start-up) covers the whole check: each
part gets at most the time left (and at most twice its budget), and a part stopped by it, or not started, is marked
cut. DIR/report.md and DIR/gpu.json are rewritten (atomically) before and after every part, so a run killed from
outside keeps what it measured; a non-finite number is written as null and fails its part. The exit code is 0 when
every part passed, else 1. Also writes DIR/<part>.log (what the part printed, and the traceback of a failure).
"""
import contextlib
import dataclasses
import datetime
import gc
import importlib
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import distill
import zeroshot
from helpers import common, devices, domains, models, views
from helpers.bench_timing import (TRAIN_MODES, TRAIN_VARIANTS, bench_train, commit, device_name, generate,
                                  import_test_kit, markdown, peak_mib, save_random_teacher, sync, time_call,
                                  time_train_step, write_smooth_pngs)

PARTS = ("zeroshot", "student", "stage3", "synth", "distill")  # ours: cheapest and most telling first
BUDGET_S = {"zeroshot": 30, "student": 60, "stage3": 90, "synth": 150, "distill": 180}  # one H100/H200: 510 s
NEEDS = {"zeroshot": ("open_clip",), "student": ("timm",), "stage3": ("timm", "open_clip"),
         "synth": ("diffusers", "transformers", "open_clip"), "distill": ("timm", "open_clip")}  # beyond torch(vision)
PACKAGES = ("torchvision", "timm", "open_clip", "transformers", "huggingface_hub", "diffusers")
LOGIT_TOLERANCE = 1e-2  # fp32 logits of the same embedding agree to ~1e-5; bf16 logits near 30 step by 0.125


@dataclass
class Sizes:
    tiny: bool
    teacher: str                # open_clip architecture with random weights, or the tests' tiny CLIP
    student: str
    batch: int                  # distill, stage3 and zeroshot
    synth_batches: tuple
    synth_steps: int
    synth_px: int
    zeroshot_images: int
    classes: int                # the random zero-shot classifier's
    stage3_steps: int
    stage3_per_class: int       # 8 classes, 10% held out
    stage3_px: int
    warmup: int
    runs: int
    workers: int
    compile_backend: str


REAL = Sizes(False, "ViT-B-32", "tiny_vit_11m_224", 256, (8, 16), 6, 512, 4096, 100, 200, 40, 256, 3, 10,
             os.cpu_count() or 1, "inductor")
# CPU: tiny models; torch.compile traces and differentiates the graph (aot_eager) without generating kernels
TINY = Sizes(True, "kit.make_tiny_teacher", "test_vit", 8, (2, 4), 2, 64, 32, 10, 40, 8, 48, 0, 1, 0, "aot_eager")


def sd15_components(device, dtype=torch.float32):
    """UNet, VAE and text encoder of SD-1.5 with random weights, from the published configs of
    runwayml/stable-diffusion-v1-5 (unet/, vae/, text_encoder/config.json): 859.52M, 83.65M, 123.06M parameters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device(device):  # random init on the GPU: seconds, instead of a minute on the CPU
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407))
    return unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)


def save_sd15_pipeline(folder, device):
    """SD-1.5 with random weights (fp16 on a GPU) and the LCM scheduler, saved as a diffusers folder."""
    from diffusers import LCMScheduler, StableDiffusionPipeline
    unet, vae, text_encoder = sd15_components(device, torch.float16 if device.type == "cuda" else torch.float32)
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                             num_train_timesteps=1000, set_alpha_to_one=False, clip_sample=False)
    tokenizer = import_test_kit("kit_diffusers").clip_tokenizer()  # the real CLIP vocabulary, built offline
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# the parts: each fills `numbers` as it goes and appends what is wrong to `problems`

def check_synth(sz, ctx, numbers, problems):
    import synth
    folder = ctx.tmp / "generator"
    if sz.tiny:
        import_test_kit("kit_diffusers").make_tiny_pipeline(folder)
    else:
        save_sd15_pipeline(folder, ctx.device)
    t0 = time.perf_counter()
    pipe, dtype = synth.load_generator(synth.resolve_generator(str(folder))[1], ctx.device)
    numbers["load s (synth.load_generator, from disk)"] = time.perf_counter() - t0
    numbers["dtype"] = str(dtype).replace("torch.", "")
    numbers["params M (unet, vae, text encoder)"] = ", ".join(
        f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}" for m in (pipe.unet, pipe.vae, pipe.text_encoder))
    names = domains.CLASSNAMES["pets"]
    prompts = synth.make_prompts("pets", names, 1, "diverse", 0)
    for b in sz.synth_batches:  # synth.py's call: b prompts, per-image seeds, LCM guidance 0.5 (no CFG pass)
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        seconds = time_call(lambda: generate(pipe, [prompts[c][0] for c in range(b)],
                                             [synth.image_seed(0, c, 0) for c in range(b)], sz.synth_steps, 0.5,
                                             sz.synth_px), ctx.device, min(sz.warmup, 1), min(sz.runs, 2))
        numbers[f"img/s batch {b} ({sz.synth_steps} steps, {sz.synth_px} px)"] = b / seconds
        numbers[f"peak GPU MiB batch {b}"] = peak_mib(ctx.device)
    # synth.py end to end (prompts, generation loop, writer threads, manifest) with the pipeline loaded above
    real_load, synth.load_generator = synth.load_generator, lambda source, device: (pipe, dtype)
    try:
        t0 = time.perf_counter()
        synth.main(["--dataset", "pets", "--per-class", "1", "--generator", str(folder), "--steps",
                    str(sz.synth_steps), "--guidance", "0.5", "--size", str(sz.synth_px), "--batch-size",
                    str(max(sz.synth_batches)), "--out", str(ctx.tmp / "synth"), "--device", str(ctx.device)])
        seconds = time.perf_counter() - t0
    finally:
        synth.load_generator = real_load
    items, _, _ = common.load_manifest(ctx.tmp / "synth" / "pets")
    numbers[f"synth.py img/s ({len(names)} images, batch {max(sz.synth_batches)})"] = len(items) / seconds
    if len(items) != len(names):
        problems.append(f"synth.py listed {len(items)} images, expected {len(names)}")


def check_zeroshot(sz, ctx, numbers, problems):
    teacher = models.load_teacher(ctx.teacher(), None, device=ctx.device)
    model, D, S, B = teacher.model, teacher.embed_dim, teacher.image_size, sz.batch
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(sz.zeroshot_images, 3, S, S, generator=gen)
    images = images.pin_memory() if ctx.device.type == "cuda" else images  # as evaluate()'s loader pins
    batches = [(images[i:i + B], torch.zeros(len(images[i:i + B]), dtype=torch.long), [])  # predict's loader items
               for i in range(0, len(images), B)]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the fp32 run is true fp32
    try:
        # A random classifier at CLIP's logit scale. The embeddings of random images share one direction
        # (cos ~0.97 to their mean): classes along random directions orthogonal to it, so that each image's own
        # part decides its class, plus 0.3 of it, so that logits sit near 30 as a trained CLIP's do.
        with torch.inference_mode():
            mean = F.normalize(model.encode_image(batches[0][0].to(ctx.device)).float().mean(0).cpu(), dim=0)  # (D,)
        r = torch.randn(sz.classes, D, generator=gen)
        r = F.normalize(r - (r @ mean)[:, None] * mean, dim=-1)
        classifier = F.normalize(0.3 * mean + math.sqrt(1 - 0.3 ** 2) * r, dim=-1)  # (C, D)
        on_device = classifier.to(ctx.device)  # where evaluate() builds it
        zeroshot.predict(model, batches[:1], on_device, ctx.device, amp=True, progress=False)  # warm-up
        logits = {}
        for name, amp in (("bf16 autocast", True), ("fp32", False)):
            sync(ctx.device)
            t0 = time.perf_counter()
            logits[name] = zeroshot.predict(model, batches, on_device, ctx.device, amp=amp, progress=False)[0]
            sync(ctx.device)
            numbers[f"img/s {name} (zeroshot.predict, batch {B}, {S} px)"] = len(images) / (time.perf_counter() - t0)
        # the same bf16-autocast tower, logits computed here in fp32: predict's must match them
        reference = []
        with torch.inference_mode():
            for x, _, _ in batches:
                with devices.autocast(ctx.device):
                    emb = model.encode_image(x.to(ctx.device))  # (B, D)
                reference.append(100.0 * F.normalize(emb.float().cpu(), dim=-1) @ classifier.t())  # (B, C)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    low, full = logits["bf16 autocast"], logits["fp32"]
    top2 = full.topk(2, dim=1).values
    numbers["top-1 agreement bf16 vs fp32 %"] = 100 * (low.argmax(1) == full.argmax(1)).float().mean().item()
    numbers[f"classes predicted (fp32, of {sz.classes})"] = full.argmax(1).unique().numel()
    numbers["median top-1 logit (fp32)"] = top2[:, 0].median().item()
    numbers["median top-1 minus top-2 logit (fp32)"] = (top2[:, 0] - top2[:, 1]).median().item()
    error = (low - torch.cat(reference)).abs().max().item()
    numbers["max |predict logit - fp32 logit of the same bf16 embedding|"] = error
    if ctx.device.type != "cuda":
        numbers["note"] = "autocast is off on a CPU: both runs are fp32"
    if not (torch.isfinite(low).all() and torch.isfinite(full).all()):
        problems.append("non-finite logits")
    if not error <= LOGIT_TOLERANCE:
        problems.append(f"zeroshot.predict's logits differ by {error:.3g} from fp32 logits of the same embeddings: "
                        f"the logits are not computed in fp32")


def check_student(sz, ctx, numbers, problems):
    """The student's training step alone: torch, torchvision (roi_align) and timm, no teacher and no open_clip."""
    size, dim = (64, 32) if sz.tiny else (224, 512)  # the teacher's input size and embedding width
    folder = ctx.tmp / "student_images"
    folder.mkdir()
    write_smooth_pngs(folder, sz.batch)
    images = views.load_images(folder, workers=sz.workers)
    boxes, flips = views.draw_views(images.image_sizes, 1, torch.Generator().manual_seed(0))
    idx = torch.arange(len(images.paths))

    def render():  # distill.py's crops: batched roi_align on the device
        return views.render_views(images, idx, boxes[:, 0], flips[:, 0], size, models.OPENAI_CLIP_MEAN,
                                  models.OPENAI_CLIP_STD, ctx.device)
    variants = (TRAIN_VARIANTS[1], (f"torch.compile ({sz.compile_backend}) + channels_last", True,
                                    sz.compile_backend, True))
    for label, channels_last, backend, fused in variants:
        steps = time_train_step(sz.student, SimpleNamespace(embed_dim=dim, image_size=size), (render, None, None, None),
                                ctx.device, sz.warmup, sz.runs, channels_last, backend, fused, modes=TRAIN_MODES[:1])
        rate = steps["img_per_s"][TRAIN_MODES[0]]
        numbers[f"img/s {label} ({sz.student}, batch {sz.batch}, {size} px)"] = rate
        numbers[f"first call s {label}"] = steps["first_call_s"][TRAIN_MODES[0]]
        if backend:
            numbers[f"compile s {label} (first call minus a step)"] = steps["compile_s"][TRAIN_MODES[0]]
        if not math.isfinite(rate):
            problems.append(f"{label}: {rate} img/s")


def check_distill(sz, ctx, numbers, problems):
    args = dataclasses.replace(ctx.args, teacher=ctx.teacher(), students=[sz.student], student=[],
                               batch_size=sz.batch, warmup=sz.warmup, runs=sz.runs, workers=sz.workers)
    variants = TRAIN_VARIANTS[1:] + ((f"torch.compile ({sz.compile_backend}) + channels_last", True,
                                      sz.compile_backend, True),)
    table, record = bench_train(args, ctx.device, variants)
    print(table)
    numbers["precision"] = record["dtype"]
    for variant, steps in record["variants"].items():
        for mode, rate in steps["img_per_s"].items():
            numbers[f"img/s {variant}: {mode}"] = rate
            if not math.isfinite(rate):
                problems.append(f"{variant} {mode}: {rate} img/s")
        if "compile" in variant:  # the first call of each step's graph, less a timed step: ~0 where none compiled
            for mode, seconds in steps["compile_s"].items():
                numbers[f"compile s {variant}: {mode} (first call minus a step)"] = seconds
    numbers[f"teacher cache build img/s (fp32{', TF32' if ctx.device.type == 'cuda' else ''})"] = \
        record["cache_build_img_per_s"]
    data_ms = record["data_path_cpu_ms_per_img"]
    numbers["data path CPU ms/img, PIL per image (before the store)"] = data_ms["pil"]
    numbers["data path CPU ms/img, gather from the store"] = data_ms["gather"]
    numbers[f"data path ms/img, gather + render on {ctx.device.type}"] = data_ms["render"]
    numbers[f"image store build s per 1,000 images ({sz.workers} workers)"] = record["store_build_s_per_1000"]


def check_stage3(sz, ctx, numbers, problems):
    kit = import_test_kit("kit")  # the tests' synth-folder writer: random images in synth.py's format
    data = kit.make_synth_folder(ctx.tmp / "stage3_data", classnames=[f"class {i}" for i in range(8)],
                                 per_class=sz.stage3_per_class, size=(sz.stage3_px, sz.stage3_px))
    out = ctx.tmp / "stage3_run"
    t0 = time.perf_counter()
    try:
        distill.main(["--loss", "l2", "--data", str(data), "--teacher", ctx.teacher(), "--student", sz.student,
                      "--steps", str(sz.stage3_steps), "--batch-size", str(sz.batch), "--views", "2", "--workers",
                      str(sz.workers), "--holdout", "0.1", "--log-every", str(max(1, sz.stage3_steps // 10)),
                      "--device", str(ctx.device), "--out", str(out)])
    except SystemExit as e:  # distill.py's one-line error is in the part's log
        raise RuntimeError(f"distill.py exited with code {e.code}") from None
    numbers[f"seconds (cache build, {sz.stage3_steps} steps, held-out evaluation)"] = time.perf_counter() - t0
    log = [rec for _, rec in common.read_jsonl(out / "log.jsonl", "training log")]
    losses = [rec["loss"] for rec in log]
    numbers["loss, first and last logged"] = f"{losses[0]:.4f} -> {losses[-1]:.4f}"
    numbers["img/s (last log line)"] = log[-1]["img_per_s"]
    numbers["held-out synthetic top-1 %"] = 100 * common.read_json(out / "eval_holdout.json", "result")[
        "metrics"]["acc1"]
    state = torch.load(out / "student.pt", map_location="cpu", weights_only=False)["state_dict"]
    if not all(math.isfinite(v) for v in losses) or not all(torch.isfinite(t).all() for t in state.values()
                                                               if t.is_floating_point()):
        problems.append("NaN or inf in the losses or the student's weights")
    if not losses[-1] < losses[0]:
        problems.append(f"the loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")


CHECKS = {"zeroshot": check_zeroshot, "student": check_student, "stage3": check_stage3, "synth": check_synth,
          "distill": check_distill}


# ----------------------------------------------------------------------------------------------
# running the parts and writing the report

@dataclass
class Context:
    args: object               # bench.py's Args
    device: torch.device
    tmp: Path                  # scratch folder, removed at the end
    out: Path                  # the report folder
    sizes: Sizes
    teacher_spec: str = None

    def teacher(self):
        """'local-dir:...' of the random-weight teacher, saved once for the parts that need it."""
        if self.teacher_spec is None:
            folder = self.tmp / "teacher"
            self.teacher_spec = import_test_kit("kit").make_tiny_teacher(folder) if self.sizes.tiny else \
                save_random_teacher(self.sizes.teacher, folder)
        return self.teacher_spec


class PartTimeout(BaseException):
    """A part ran past its time limit. A BaseException, so that no `except Exception` in the code under test
    swallows it."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raise PartTimeout in the main thread after `seconds` (None: no limit): a part that hangs (a data loader, a
    compile) is recorded as failed or cut, and the next part still runs."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(signum, frame):
        raise PartTimeout(f"stopped after {seconds:.3g} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_part(name, sz, ctx, left=None):
    """One part, its output captured in DIR/<name>.log; any failure, running past twice its budget or past the
    `left` seconds of the deadline (then it is cut) is recorded, never raised. Non-finite numbers become None."""
    numbers, problems, status = {}, [], None
    limits = [x for x in (None if sz.tiny else 2 * BUDGET_S[name], left) if x is not None]
    t0 = time.perf_counter()
    with open(ctx.out / f"{name}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            with time_limit(min(limits, default=None)):
                CHECKS[name](sz, ctx, numbers, problems)
        except (Exception, SystemExit, PartTimeout) as e:
            traceback.print_exc(file=log)
            if isinstance(e, PartTimeout) and left is not None and min(limits) == left:
                status = "cut"
                problems.append(f"cut: stopped at the --deadline, {left:.0f} s after it started")
            else:
                problems.append(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")
    for key, value in numbers.items():  # JSON has no NaN: null, and the part fails
        if isinstance(value, float) and not math.isfinite(value):
            numbers[key] = None
            problems.append(f"non-finite number: {key} = {value}")
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"status": status or ("FAILED" if problems else "passed"), "passed": not problems,
            "seconds": time.perf_counter() - t0, "budget_s": None if sz.tiny else BUDGET_S[name],
            "problems": problems, "numbers": numbers}


def versions():
    """Each package's version, or "not installed" / "not importable (...)": the parts that need it are skipped."""
    found = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.import_module(name).__version__
        except ModuleNotFoundError as e:
            found[name] = "not installed" if e.name == name else f"not importable (no module {e.name})"
        except Exception as e:  # e.g. a version that does not fit the host's transformers
            found[name] = f"not importable ({type(e).__name__}: {str(e).strip()[:200]})"
    return found


def run_check(args, device, argv):
    """Run the chosen parts within args.deadline seconds, rewriting DIR/report.md and DIR/gpu.json before and after
    each; returns (report text, record)."""
    deadline = time.monotonic() + args.deadline
    sz = TINY if args.tiny else REAL
    if sz.tiny:
        torch.set_num_threads(1)  # tiny models run fastest on one thread, and stay fast on a busy machine
    out = Path(args.out)
    found = versions()
    record = {"command": "python bench.py " + " ".join(argv), "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "device": device_name(device), "host_cpus":
        os.cpu_count(), "commit": commit(), "versions": found, "sizes": dataclasses.asdict(sz),
        "deadline_s": args.deadline, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        ctx = Context(args, device, Path(tmp), out, sz)
        for name in (p for p in PARTS if p in args.parts):
            missing = [f"{p} {found[p]}" for p in NEEDS[name] if found[p].startswith("not ")]
            left = deadline - time.monotonic()
            if missing or left < 1:
                part = {"status": "skipped" if missing else "cut", "passed": False, "seconds": 0, "budget_s": None,
                        "numbers": {}, "problems": [f"skipped: {m}" for m in missing] or
                        [f"cut: not started, the --deadline of {args.deadline:g} s had passed"]}
            else:
                print(f"gpu check: {name} ({left:.0f} s left) ...", file=sys.stderr, flush=True)
                record["parts"][name] = {"status": "running (if this stays, the check was stopped here)",
                                         "passed": False, "seconds": 0, "budget_s": None, "numbers": {},
                                         "problems": []}
                write_report(record, out)
                part = run_part(name, sz, ctx, left)
            record["parts"][name] = part
            print(f"gpu check: {name} {part['status']} in {part['seconds']:.0f} s"
                  + "".join(f"; {p}" for p in part["problems"]), file=sys.stderr, flush=True)
            record["passed"] = all(p["passed"] for p in record["parts"].values())
            report = write_report(record, out)  # after every part: a run killed from outside keeps what it measured
    return report, record


def write_report(record, out):
    """DIR/report.md (returned) and DIR/gpu.json, each written atomically."""
    v = record["versions"]
    by_status = {s: [n for n, p in record["parts"].items() if p["status"] == s] for s in ("FAILED", "skipped", "cut")}
    lines = ["# GPU check", "", f"`{record['command']}`", "",
             f"- date: {record['date']}", f"- device: {record['device']} ({record['host_cpus']} CPU cores)",
             "- " + ", ".join(f"{k} {x}" for k, x in v.items()),
             f"- commit {record['commit']}; sizes: {'--tiny' if record['sizes']['tiny'] else 'real'}; "
             f"--deadline {record['deadline_s']:g} s for the whole check",
             "- result: " + ("; ".join(f"{s}: {', '.join(n)}" for s, n in by_status.items() if n) or
                             ("all parts passed" if all(p["passed"] for p in record["parts"].values()) else "running"))]
    for name, part in record["parts"].items():
        budget = f" of a {part['budget_s']} s budget" + (" (over)" if part["seconds"] > part["budget_s"] else "") \
            if part["budget_s"] else ""
        lines += ["", f"## {name}: {part['status']} ({part['seconds']:.0f} s{budget})", ""]
        log = f" (see {name}.log)" if (out / f"{name}.log").exists() else ""
        lines += [f"- problem: {p}{log}" for p in part["problems"]] + ([""] if part["problems"] else [])
        rows = [[k, f"{x:.4g}" if isinstance(x, float) else "null" if x is None else x]
                for k, x in part["numbers"].items()]
        lines.append(markdown(["number", "value"], rows) if rows else "(no numbers)")
    report = "\n".join(lines) + "\n"
    with common.atomic_write(out / "report.md", "w") as f:
        f.write(report)
    common.save_json(record, out / "gpu.json")
    return report
