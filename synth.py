"""Class names -> diverse prompts -> synthetic images of a domain, with a text-to-image diffusion model.

Writes <out>/<dataset>/images/<class:03d>/<n:05d>.png, manifest.jsonl (one line per image: path, label,
classname, prompt, seed, generator) and synth.json (resolved settings), the folder distill.py and zeroshot.py
read. Image n of class c comes from its own seed, derived from (--seed, c, n); a rerun skips what is on disk.

  # look at the prompts and counts, no generator needed
  python synth.py --dataset pets --per-class 5 --dry-run
  # CPU smoke run on the tiny random pipeline of the tests (no download)
  python tests/kit.py diffusion /tmp/tiny_sd
  python synth.py --dataset pets --per-class 2 --generator /tmp/tiny_sd --steps 2 --size 32 --out /tmp/synth
  # one GPU, the paper's generator (DreamShaper-7 + LCM-LoRA, 6 steps, 512 px, float16), 265 images per class
  python synth.py --dataset pets
  # your own domain: a text file with one class name per line (or JSON, docs/domains.md) -> OUT/kitchen_tools/
  python synth.py --dataset kitchen_tools.txt --per-class 100
  # prompts with an LLM's words per class (written once to OUT/pets/attributes.json, see helpers/llm_attributes.py)
  python synth.py --dataset pets --prompts llm --llm Qwen/Qwen2.5-1.5B-Instruct
  # several GPUs on one machine (each rank takes every world_size-th batch), or independent jobs
  torchrun --nproc_per_node=4 synth.py --dataset food101 --generator sdxl-lcm
  python synth.py --dataset cars --shard 0/2   # and --shard 1/2 elsewhere, same --out
"""
import functools
import hashlib
import math
import os
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from helpers import common, devices, domain_file, domains, llm_attributes, models, synth_folder
from helpers.common import UserError, require



@dataclass
class Args:
    """Generate a synthetic training set for one domain with a text-to-image diffusion model.
    Every default says whose it is: the paper's, the authors' code's, or ours (and why)."""
    # data
    dataset: str = field(default="pets", metadata={"help": f"one of {', '.join(domains.DATASETS)}, or a domain file: "
                                                           f"one class name per line, or JSON (ours: the paper's "
                                                           f"first domain)"})
    per_class: int = field(default=265, metadata={"help": "images per class; a larger value than a previous run's "
                                                          "extends it (authors' code: 265, from 15 options)"})
    prompts: str = field(default="diverse", metadata={"help": "diverse (class + location, time, pose/colour/bloom/"
                                                              "serving/material, angle; a domain file: generic or its "
                                                              "own slots) | simple ('a photo of a {c}') | llm "
                                                              "(diverse, with an LLM's words per class) (paper: "
                                                              "diverse)"})
    llm: str = field(default="Qwen/Qwen2.5-1.5B-Instruct", metadata={
        "help": "--prompts llm: instruction-tuned causal LM (hub id or folder) that writes the attribute options "
                "(ours: the authors' Llama-2-7b-chat is gated)"})
    out: str = field(default="data/synth", metadata={"help": "images go to OUT/DATASET/, a domain file's to "
                                                             "OUT/NAME/ (ours)"})
    format: str = field(default="png", metadata={"help": "png (lossless) | jpg (quality 95, several times smaller) "
                                                         "(ours: png, lossless)"})
    save_size: Optional[int] = field(default=None, metadata={"help": "store images resized to this short side "
                                                                     "(ours: None, as generated)"})
    # generator
    generator: str = field(default="sd15-lcm", metadata={"help": "preset (sd15-lcm, sdxl-lcm, sd-turbo, sdxl-turbo),"
                                                                 " hub id ORG/NAME or a local diffusers folder "
                                                                 "(authors' code: DreamShaper-7 + LCM-LoRA)"})
    steps: Optional[int] = field(default=None, metadata={"help": "denoising steps (None: the preset's, else 25; "
                                                                 "authors' code: 6 for sd15-lcm)"})
    guidance: Optional[float] = field(default=None, metadata={"help": "guidance scale (None: the preset's, else 7.5; "
                                                                      "authors' code: 0.5 for sd15-lcm)"})
    size: Optional[int] = field(default=None, metadata={"help": "image side in px (None: the preset's, else the "
                                                                "model's native size; authors' code: 512)"})
    seed: int = field(default=0, metadata={"help": "image n of class c uses a seed derived from (seed, c, n) "
                                                   "(ours: the authors' generation was unseeded)"})
    # system (ours: where and how fast images are made, not which)
    batch_size: int = field(default=8, metadata={"help": "images per pipeline call (keep it: byte-identical reruns)"})
    shard: str = field(default="0/1", metadata={"help": "i/n: this job makes every n-th batch, from the i-th"})
    writers: int = field(default=4, metadata={"help": "background threads that encode and save images"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (float16 on CUDA, float32 elsewhere) | float16 | "
                                                         "bfloat16 | float32 (for a model that overflows in float16)"})
    dry_run: bool = field(default=False, metadata={"help": "print the prompts and counts, generate nothing"})


# All through diffusers' AutoPipelineForText2Image. LCM: LoRA-distilled, few steps, low guidance (<= 1 means
# no classifier-free guidance pass); turbo: adversarially distilled, 1-4 steps, guidance 0. The LoRA's file is
# named: offline, diffusers cannot list a hub repo's files to guess it.
LCM_LORA_FILE = "pytorch_lora_weights.safetensors"
PRESETS = {
    "sd15-lcm": dict(model="Lykon/dreamshaper-7", lora="latent-consistency/lcm-lora-sdv1-5", lora_file=LCM_LORA_FILE,
                     steps=6, guidance=0.5, size=512),
    "sdxl-lcm": dict(model="stabilityai/stable-diffusion-xl-base-1.0", lora="latent-consistency/lcm-lora-sdxl",
                     lora_file=LCM_LORA_FILE, steps=6, guidance=0.5, size=1024),
    "sd-turbo": dict(model="stabilityai/sd-turbo", lora=None, lora_file=None, steps=1, guidance=0.0, size=512),
    "sdxl-turbo": dict(model="stabilityai/sdxl-turbo", lora=None, lora_file=None, steps=1, guidance=0.0, size=512),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
OTHER_DEFAULTS = dict(steps=25, guidance=7.5)  # hub ids and folders: diffusers' usual SD settings, fewer steps


def make_prompts(dataset, classnames, per_class, mode, seed, attributes=None):
    """prompts[c][n] for every class c and image n; dataset: a built-in name or a domain_file.Domain.

    diverse: the class phrase of the paper's template (a domain file: "a photo of a {c}" and its superclass phrase)
    plus one option of each slot (domains.py's PROMPT_SLOTS; a domain file: GENERIC_SLOTS or its own). The option
    indices of a class run through an orthogonal array on m levels (m odd): rows (x, y, x+y+a, x+2y+b) mod m, so
    every block of m*m prompts covers each pair of options of each pair of attributes exactly once (the paper's
    pairwise-covering design, 225 prompts for 15 options), and blocks with different offsets (a, b) never repeat
    a row: m**4 distinct prompts per class. Rows and options are shuffled per class with seeded RNGs, so a short
    --per-class still spreads over all options, classes differ, and prompt n does not depend on --per-class.
    llm: the same design over each class's own options and superclass from attributes.json.
    """
    if mode == "simple":
        return [[f"a photo of a {name}"] * per_class for name in classnames]
    domain = domain_file.builtin(dataset) if isinstance(dataset, str) else dataset
    template, slots, type_of, order = domain.head, domain.slots, domain.type_of, domain.order
    m = min(len(v) for v in slots.values())
    m -= 1 - m % 2  # the array needs 2 invertible mod m
    require(per_class <= m ** 4, f"--per-class {per_class} is more than the {m ** 4} distinct diverse prompts per "
                                 f"class that {m} options per attribute give")
    prompts = []
    for c, name in enumerate(classnames):
        head = template.replace("{c}", name)
        if mode == "llm":  # this class's own words; the LLM's superclass in "a type of ..."
            slots = attributes["classes"][name]
            word = f"a type of {slots['superclass']}"
            head = head.replace(type_of, word) if type_of else f"{head}, {word}"
        rng = random.Random(f"{seed}/{c}/options")  # str seeds are stable across processes and Python runs
        options = [rng.sample(slots[k][:m], m) for k in order]
        rows = []
        for block in range(-(-per_class // (m * m))):
            cells = random.Random(f"{seed}/{c}/block{block}").sample(range(m * m), m * m)
            a, b = block % m, block // m
            rows += [(x, y, (x + y + a) % m, (x + 2 * y + b) % m) for x, y in (divmod(i, m) for i in cells)]
        prompts.append([", ".join([head] + [options[k][row[k]] for k in range(4)]) for row in rows[:per_class]])
    return prompts


def image_seed(seed, c, n):
    """63-bit seed of image n of class c: a hash, so nearby (c, n) get unrelated noise."""
    digest = hashlib.sha256(f"{seed}/{c}/{n}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_generator(spec, check_cache=True):
    """--generator -> (name recorded in the outputs, source dict). Offline, fail now if files are missing."""
    path = Path(spec).expanduser()
    if path.exists():
        require((path / "model_index.json").is_file(),
                f"{path} is not a diffusers pipeline folder (no model_index.json); save one with save_pretrained")
        return str(path.resolve()), dict(model=str(path.resolve()), lora=None)
    if spec in PRESETS:
        name, source = spec, {k: PRESETS[spec][k] for k in ("model", "lora", "lora_file")}
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        name, source = spec, dict(model=spec, lora=None)
    else:
        raise UserError(f"unknown generator '{spec}': use a preset ({', '.join(PRESETS)}), a hub id ORG/NAME or a "
                        f"local diffusers pipeline folder")
    if check_cache and models.hub_offline():
        for repo, file in ((source["model"], "model_index.json"), (source["lora"], source.get("lora_file"))):
            if repo and not models.in_hub_cache(repo, file):
                repos = " and ".join(f"`hf download {r}`" for r in (source["model"], source["lora"]) if r)
                raise UserError(f"generator {spec}: {repo} is not in the local Hugging Face cache and the hub cannot "
                                f"be reached (offline). Fill the cache once where there is internet ({repos}), "
                                f"and copy it here (HF_HUB_CACHE)")
    return name, source


def load_generator(source, device, dtype=None):
    """The diffusers pipeline on `device` in `dtype` (None: float16 on CUDA, float32 elsewhere; float16 also runs on
    a CPU, which is how the tests cover the GPU path), safety checker off, LCM-LoRA fused."""
    import diffusers
    from diffusers import AutoPipelineForText2Image, LCMScheduler
    from diffusers.utils import deprecation_utils
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    import huggingface_hub
    import transformers
    for lib in (diffusers, transformers):  # "Loading pipeline components / weights" bars: noise on stderr
        lib.utils.logging.disable_progress_bar()
    for lib in (diffusers, huggingface_hub):  # "using the cached commit", "no LoRA keys for the text encoder": too
        lib.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")  # diffusers passes a deprecated argument
    kwargs = {}
    if dtype != torch.float32:  # newer diffusers renamed torch_dtype to dtype (and warn on the old name)
        kwargs["dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"] = dtype
    try:
        index = diffusers.DiffusionPipeline.load_config(source["model"])
        if index.get("safety_checker") not in (None, [None, None]):  # skip loading it at all
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipe = AutoPipelineForText2Image.from_pretrained(source["model"], **kwargs)
        if source["lora"]:
            pipe.load_lora_weights(source["lora"], weight_name=source.get("lora_file"))  # offline needs the name
            pipe.fuse_lora()  # merge into the base weights, then drop the LoRA layers: no per-step overhead
            pipe.unload_lora_weights()
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    except Exception as e:  # hub, file and config errors arrive as many types with long texts
        raise UserError(f"could not load generator {source['model']}: {str(e).strip().splitlines()[0][:300]}") from None
    pipe.set_progress_bar_config(disable=True)  # our own bar counts images, not denoising steps
    return pipe.to(device), dtype


def make_images(pipe, batch, prompts, seed, steps, guidance, size):
    """One pipeline call for a batch [(c, n), ...] -> (B, H, W, 3) float images in [0, 1], none of them NaN, and
    how many had to be decoded again in float32. A NaN image would be saved as a black one by uint8 conversion."""
    final = {}

    def keep_latents(pipe, step, t, tensors):  # the last step's latents are what the pipeline decodes
        final["latents"] = tensors["latents"]
        return tensors
    # Per-image CPU generators: the noise of image (c, n) is the same on any device, batch or rank.
    generators = [torch.Generator().manual_seed(image_seed(seed, c, n)) for c, n in batch]
    images = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                  generator=generators, output_type="np", callback_on_step_end=keep_latents,
                  callback_on_step_end_tensor_inputs=["latents"]).images  # (B, H, W, 3)
    bad = [i for i, image in enumerate(images) if not np.isfinite(image).all()]
    if bad:
        first, dtype = "image {:03d}/{:05d}".format(*batch[bad[0]]), pipe.unet.dtype
        require(torch.isfinite(final["latents"][bad]).all(), f"the generator's denoiser returned NaN for {first} in "
                f"{str(dtype)[6:]}: {'check the model files' if dtype == torch.float32 else 'pass --dtype float32'}"
                f"; no image of this batch was saved, the files before it are kept")
        images[bad] = decode_in_float32(pipe, final["latents"][bad])
        require(np.isfinite(images).all(), f"the generator's VAE returned NaN for {first} even in float32: check "
                f"the model's files (re-download it); no image of this batch was saved, the files before it are kept")
    return images, len(bad)


def decode_in_float32(pipe, latents):
    """(b, 4, h, w) final latents -> (b, H, W, 3) images in [0, 1], decoded as the pipeline does but with the VAE in
    float32: a float16 VAE can overflow to NaN (SDXL's is the known case), and float32 is diffusers' own fix."""
    vae, dtype = pipe.vae, pipe.vae.dtype
    vae.to(torch.float32)  # for this call only: float16 -> float32 -> float16 is exact
    mean, std = (getattr(vae.config, k, None) for k in ("latents_mean", "latents_std"))
    latents = latents.float() / vae.config.scaling_factor
    if mean is not None and std is not None:  # as the SDXL pipeline unscales such VAEs' latents
        latents = latents * latents.new_tensor(std).view(1, -1, 1, 1) + latents.new_tensor(mean).view(1, -1, 1, 1)
    with torch.no_grad():
        decoded = vae.decode(latents, return_dict=False)[0]  # (b, 3, H, W) in [-1, 1]
    vae.to(dtype)
    if getattr(pipe, "watermark", None) is not None:  # SDXL's, when invisible-watermark is installed
        decoded = pipe.watermark.apply_watermark(decoded)
    return pipe.image_processor.postprocess(decoded, output_type="np")


@common.entrypoint
def main(argv=None):
    args = common.parse_args(Args, argv, description=__doc__)
    domain = domain_file.load_domain(args.dataset)  # a built-in dataset or the user's domain file, checked
    for flag, allowed in (("prompts", ("diverse", "simple", "llm")),
                          ("format", ("png", "jpg")), ("dtype", ("auto", *DTYPES))):
        require(getattr(args, flag) in allowed, f"--{flag} must be {' | '.join(allowed)} (got '{getattr(args, flag)}')")
    for flag in ("per_class", "batch_size", "writers", "steps", "size", "save_size"):  # None: the default
        value = getattr(args, flag)
        require(value is None or value >= 1, f"--{flag.replace('_', '-')} must be at least 1 (got {value})")
    shard = re.fullmatch(r"(\d+)/(\d+)", args.shard)
    require(shard and int(shard[1]) < int(shard[2]), f"--shard must be i/n with 0 <= i < n (got '{args.shard}')")
    classnames = list(domain.classnames)
    gen_name, source = resolve_generator(args.generator, check_cache=not args.dry_run)
    preset = PRESETS.get(args.generator, OTHER_DEFAULTS)
    steps = args.steps or preset["steps"]
    guidance = args.guidance if args.guidance is not None else preset["guidance"]
    require(math.isfinite(guidance) and guidance >= 0, f"--guidance must be a number >= 0 (got {guidance})")

    num_classes, folder = len(classnames), Path(args.out) / domain.name
    if not args.dry_run or args.prompts == "llm":  # an unusable --out fails now, before any model is loaded; the
        common.prepare_out_dir(args.out, create=False)  # folders are made by the first file written (synth.json),
        common.prepare_out_dir(folder, create=False)  # so a run refused before it leaves no empty folder
    dist = devices.setup_distributed(args.device) if not args.dry_run else devices.Dist()
    attributes = None
    if args.prompts == "llm":  # rank 0 asks the LLM once (or reuses attributes.json); other ranks wait for the file
        attributes = llm_attributes.get_attributes(
            folder / "attributes.json", args.llm, domain, classnames, args.seed,
            devices.pick_device(args.device) if args.dry_run else dist.device, is_main=dist.is_main)
    prompts = make_prompts(domain, classnames, args.per_class, args.prompts, args.seed, attributes)
    # Work unit = a batch of the global order i = n * num_classes + c (image-major, so a larger --per-class only
    # appends). Batch k always holds the same images and goes to part k % parts: batched kernels round differently
    # for other batch compositions, so fixed batches make shards, ranks and restarts byte-identical.
    parts, part = int(shard[2]) * dist.world_size, int(shard[1]) * dist.world_size + dist.rank
    total = num_classes * args.per_class
    batches = [[divmod(i, num_classes)[::-1] for i in range(k, min(k + args.batch_size, total))]
               for k in range(0, total, args.batch_size)][part::parts]  # [(c, n), ...] per batch of this part
    if args.dry_run:
        for c, n in (item for batch in batches for item in batch):
            print(f"{c:03d}/{n:05d} seed {image_seed(args.seed, c, n)} | {prompts[c][n]}")
        print(f"dry run: {num_classes} classes x {args.per_class} = {total} images, this part ({part}/{parts}) "
              f"{sum(map(len, batches))}; generator {gen_name}, {steps} steps, guidance {guidance}")
        return

    info = dict(asdict(args), steps=steps, guidance=guidance, size=args.size or preset.get("size"),
                generator=gen_name, generator_source=source, classnames=classnames,
                # a domain file: "dataset" is null (no built-in test split); "domain" (its name), "classnames" and
                # "templates" are all distill.py and zeroshot.py need to know of it (templates do not change images:
                # a rerun with new ones only rewrites this file)
                dataset=domain.name if domain.builtin else None, domain=None if domain.builtin else domain.name,
                templates=None if domain.builtin else list(domain.templates),
                template=domain.templates[0] if domain.builtin else domain.head,
                vocabulary={"diverse": domain.slots, "simple": None,
                            "llm": attributes and attributes["classes"]}[args.prompts], version=1)
    synth_folder.check_folder(folder, info, skip=() if info["size"] else ("size",))  # before the slow load
    pipe, dtype = (load_generator(source, dist.device) if args.dtype == "auto"  # its default: float16 on CUDA only
                   else load_generator(source, dist.device, DTYPES[args.dtype]))
    size = info["size"] = info["size"] or pipe.unet.config.sample_size * pipe.vae_scale_factor  # native size
    info["per_class"] = synth_folder.check_folder(folder, info)
    # Every process writes it (same identity; rank 0 may still be loading when rank 1 saves its first image), before
    # any image: a folder holding images always holds its synth.json.
    common.save_json(info, folder / "synth.json")

    def record(c, n):
        return {"path": f"images/{c:03d}/{n:05d}.{args.format}", "label": c, "classname": classnames[c],
                "prompt": prompts[c][n], "seed": image_seed(args.seed, c, n), "generator": gen_name}

    # () -> {(c, n)} on disk
    scan = functools.partial(synth_folder.scan_images, folder, num_classes, args.per_class, args.format)
    mine = {item for batch in batches for item in batch}
    for c in {c for c, _ in mine}:  # temp files of a killed run, in this part's share only (others may be live)
        for tmp in (folder / "images" / f"{c:03d}").glob(".*.tmp"):
            if tmp.name[1:].partition(".")[0].isdigit() and (c, int(tmp.name[1:].partition(".")[0])) in mine:
                tmp.unlink(missing_ok=True)
    manifest_fd = None
    if parts == 1:  # the only writer: fix the manifest now (orphans, torn line), then append to it per image
        for tmp in folder.glob(".manifest.jsonl.*.tmp"):
            tmp.unlink(missing_ok=True)
        synth_folder.write_manifest(folder, scan, record)
        manifest_fd = os.open(folder / "manifest.jsonl", os.O_WRONLY | os.O_APPEND)
    done = scan()
    todo = sum(item not in done for item in mine)
    print(f"synth: {domain.name} {num_classes} classes x {args.per_class} | {gen_name} | {steps} steps, guidance "
          f"{guidance}, {size} px | {dist.device} {str(dtype)[6:]} | part {part}/{parts}: {todo} to make, "
          f"{len(mine) - todo} on disk")

    t0, written, redecoded = time.time(), 0, 0
    writer = synth_folder.Writer(folder, args.writers, args.format, args.save_size, manifest_fd,
                                 max_queued=2 * args.batch_size)
    # disable=None: the bar shows on a terminal only, not in log files (nor between a run's output and its error)
    bar = tqdm(total=todo, unit="img", disable=None if dist.is_main and todo else True, dynamic_ncols=True)
    try:
        for batch in batches:
            if all(item in done for item in batch):
                continue
            images, fixed = make_images(pipe, batch, [prompts[c][n] for c, n in batch], args.seed, steps, guidance,
                                        size)  # (B, H, W, 3)
            if fixed and not redecoded:
                tqdm.write(f"note: the VAE overflowed to NaN in {str(dtype)[6:]}; such images are decoded again in "
                           f"float32")
            redecoded += fixed
            if written == 0 and dist.device.type == "cuda":
                print(f"peak GPU memory {torch.cuda.max_memory_allocated(dist.device) / 2**30:.1f} GiB at "
                      f"batch size {len(batch)}")
            for (c, n), array in zip(batch, images):
                if (c, n) not in done:
                    writer.put(array, record(c, n))
                    written += 1
            bar.update(sum(item not in done for item in batch))
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"out of GPU memory at --batch-size {args.batch_size}: lower it; the files so far are "
                        f"kept") from None
    finally:
        writer.close()
        bar.close()
        if manifest_fd is not None:
            os.close(manifest_fd)
    writer.check()
    # sorted; with several parts, the last one to finish lists all
    listed = synth_folder.write_manifest(folder, scan, record)
    seconds = time.time() - t0
    print(f"done{f' (rank {dist.rank})' if dist.enabled else ''}: wrote {written}, skipped {len(mine) - todo}, "
          f"{seconds:.2f} s ({written / max(seconds, 1e-9):.2f} img/s); {folder / 'manifest.jsonl'} lists {listed}"
          f"{f'; {redecoded} decoded again in float32' if redecoded else ''}")
    devices.cleanup_distributed()


if __name__ == "__main__":
    main()
