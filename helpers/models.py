"""The two kinds of model this repo handles: the teacher (an open_clip CLIP model, frozen) and the
student (a timm encoder + a linear projection into the teacher's embedding space).

  - `load_teacher`: open_clip by name + tag, `local-dir:PATH`, `hf-hub:ORG/REPO` or a weights file, with
    one-line errors for names, tags and weights that cannot be had (offline included);
  - `Student`, `build_student`, `load_student`, `student_checkpoint`: the student and its self-contained
    student.pt.
"""
import dataclasses
import os
import socket
import typing
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import torch
import torch.nn as nn

from helpers.common import UserError, require

STUDENT_FORMAT = "zsd-student/1"  # the "format" key of every student.pt
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_EXTS = (".safetensors", ".bin", ".pth")  # the weight files open_clip looks for in a local-dir: folder


def file_signature(path):
    """(path, size, mtime) of a file, or None: part of a cache key for weights on disk."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return [str(p.resolve()), st.st_size, int(st.st_mtime)]



# ----------------------------------------------------------------------------------------------
# the teacher: an open_clip model, frozen

def hub_offline():
    """True if the Hugging Face hub cannot be used: offline mode was asked for (HF_HUB_OFFLINE, read as
    huggingface_hub reads it), or the first hop towards the hub's endpoint does not answer a 3 s TCP probe.
    Without the probe, every missing file costs 25-47 s of retries on a machine with no network. When the
    probe fails we switch huggingface_hub to offline mode for this process, so cached files still load at once."""
    import huggingface_hub.constants as hc
    if hc.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in hc.ENV_VARS_TRUE_VALUES:
        return True
    try:
        socket.create_connection(hub_first_hop(hc.ENDPOINT), timeout=3).close()
        return False
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        hc.HF_HUB_OFFLINE = True
        return True


def hub_first_hop(endpoint):
    """(host, port) that huggingface_hub connects to first for `endpoint` (HF_ENDPOINT, huggingface.co by
    default): the proxy its HTTP client takes from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY (NO_PROXY honoured),
    else the endpoint itself.

    Why only the first hop: it is what fails on a machine without network (no DNS, no route, the proxy down),
    it needs no TLS, and one TCP handshake fits a 3 s budget. Whether the hub answers behind a live proxy is
    left to huggingface_hub, with its own retries and errors: the user chose that route.
    """
    url = urlsplit(endpoint)
    proxies = urllib.request.getproxies()  # the same environment variables httpx and requests read
    proxy = None if urllib.request.proxy_bypass(url.hostname or "") else (
        proxies.get(url.scheme) or proxies.get("all"))
    hop = urlsplit(proxy if "://" in proxy else "http://" + proxy) if proxy else url
    try:
        return hop.hostname, hop.port or (443 if hop.scheme == "https" else 80)
    except ValueError:  # urlsplit checks the port only when asked for it
        raise UserError(f"'{proxy or endpoint}' (a proxy variable or HF_ENDPOINT) has no valid port: fix it or "
                        f"unset it") from None


@dataclasses.dataclass
class Teacher:
    """A loaded open_clip model and everything needed to feed it and identify it."""
    model: nn.Module            # frozen CLIP model: encode_image, encode_text
    preprocess: typing.Callable  # PIL -> (3, H, W) tensor, the model's own eval transform
    tokenizer: typing.Callable   # list[str] -> (N, context_length) token ids
    name: str                   # open_clip name, or local-dir:ABS_PATH
    pretrained: typing.Optional[str]  # tag, weights path, or None (local-dir)
    image_size: int
    mean: tuple
    std: tuple
    embed_dim: int

    @property
    def ident(self):
        """What identifies the teacher's weights (goes into cache keys and student.pt)."""
        return {"model": self.name, "pretrained": self.pretrained}

    def weights_key(self):
        """ident plus the weight file's size and mtime when it lives on disk, for cache keys."""
        key = dict(self.ident)
        if self.name.startswith("local-dir:"):
            folder = Path(self.name[len("local-dir:"):])
            key["files"] = sorted(file_signature(p) for p in folder.iterdir() if p.is_file())
        elif self.pretrained and os.path.isfile(self.pretrained):
            key["files"] = [file_signature(self.pretrained)]
        return key


def resolve_teacher(name, pretrained, weights=True):
    """Check name/tag before open_clip does, so bad input fails fast with a useful message (nothing is loaded).
    A local-dir: folder must hold its weights, unless weights=False (a caller that wants the architecture only)."""
    import open_clip
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        require(folder.is_dir(), f"teacher folder {folder} does not exist (local-dir:PATH must be an "
                                 f"open_clip folder with open_clip_config.json and weights)")
        require((folder / "open_clip_config.json").is_file(),
                f"{folder} has no open_clip_config.json, so it is not an open_clip model folder")
        # open_clip would warn and go on with random weights: a silent wrong teacher, refused here
        require(not weights or any(p.suffix in WEIGHT_EXTS for p in folder.iterdir() if p.is_file()),
                f"{folder} has open_clip_config.json but no weights file ({', '.join('*' + e for e in WEIGHT_EXTS)}, "
                f"e.g. open_clip_model.safetensors): copy the model's weights file into it")
        return "local-dir:" + str(folder.resolve()), None
    if name.startswith("hf-hub:"):
        require(not hub_offline(), f"{name} needs the Hugging Face hub, which cannot be reached (offline). "
                                   f"Download the repo elsewhere and pass local-dir:PATH instead")
        return name, None
    if name not in open_clip.list_models():
        raise UserError(f"unknown open_clip model '{name}': use one of open_clip.list_models() "
                        f"(e.g. ViT-B-32), local-dir:PATH or hf-hub:ORG/REPO")
    if pretrained in (None, "", "none"):
        return name, None
    if os.path.isfile(os.path.expanduser(pretrained)):
        return name, str(Path(pretrained).expanduser().resolve())
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise UserError(f"unknown pretrained tag '{pretrained}' for {name}: use a weights file or one of "
                        f"{', '.join(tags) or '(none)'}")
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if hub_offline() and not _pretrained_in_cache(cfg):
        where = (f"open_clip_pytorch_model.bin from the Hugging Face repo {cfg['hf_hub'].rstrip('/')}"
                 if cfg.get("hf_hub") else cfg.get("url") or "the weights file")
        raise UserError(f"weights {name}/{pretrained} are not in the local cache and the hub cannot be reached "
                        f"(offline). Run once with internet to cache them, or download {where} and pass "
                        f"--pretrained /path/to/that/file")
    return name, pretrained


def in_hub_cache(repo, *filenames):
    """Is any of these files of a Hugging Face repo already in the local cache (no network)?"""
    from huggingface_hub import try_to_load_from_cache
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames)


def _pretrained_in_cache(cfg):
    """Is the file behind an open_clip pretrained config already in the Hugging Face cache?"""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return False
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith(".bin"):
        candidates.insert(0, filename[:-4] + ".safetensors")
    return in_hub_cache(repo, *candidates)


def load_teacher(name="ViT-B-32", pretrained="datacomp_xl_s13b_b90k", device="cpu"):
    """Load an open_clip CLIP model, frozen in eval mode, with its eval transform and tokenizer.

    name: built-in open_clip name (with `pretrained` a tag or a weights file), `local-dir:PATH`
    (an open_clip folder: open_clip_config.json + weights), or `hf-hub:ORG/REPO`.
    """
    import open_clip
    name, pretrained = resolve_teacher(name, pretrained)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except UserError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/FileNotFoundError with long texts
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if "state_dict" in msg:  # open_clip loads strictly: missing or unexpected weights, or other shapes
            weights = "the weights in " + name[len("local-dir:"):] if name.startswith("local-dir:") else pretrained
            msg = f"{weights} do not fit the model's config: {first_difference(str(e))}"
        raise UserError(f"could not load teacher {name} ({pretrained}): {msg}") from None
    model.eval().requires_grad_(False)
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    embed_dim = _probe_embed_dim(model, size, device)
    return Teacher(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, pretrained=pretrained,
                   image_size=int(size), mean=tuple(pp.get("mean", OPENAI_CLIP_MEAN)),
                   std=tuple(pp.get("std", OPENAI_CLIP_STD)), embed_dim=embed_dim)


def first_difference(message):
    """The first missing key, unexpected key or shape mismatch of torch's load_state_dict error text."""
    lines = [ln.strip() for ln in message.splitlines()[1:] if ln.strip()]
    return (lines[0] if lines else "keys or shapes differ")[:200]


def _probe_embed_dim(model, size, device):
    """Output width of encode_image (512 for ViT-B-32): from the projection, or a 1-image forward."""
    proj = getattr(model.visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return proj.shape[1]
    with torch.no_grad():
        return model.encode_image(torch.zeros(1, 3, size, size, device=device)).shape[-1]


def eval_transform(image_size, mean, std):
    """Resize the short side (bicubic), centre-crop, normalise: CLIP's eval preprocessing."""
    import open_clip
    return open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)


# ----------------------------------------------------------------------------------------------
# the student: a timm encoder + a linear map into the teacher's embedding space

class Student(nn.Module):
    """timm backbone (pretrained=False, num_classes=0: pooled features) + nn.Linear(feat, embed_dim)."""

    def __init__(self, timm_name, embed_dim, image_size=224, pretrained=False):
        super().__init__()
        import timm
        try:
            self.encoder = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, img_size=image_size)
        except TypeError:  # CNNs take any size and have no img_size argument
            self.encoder = timm.create_model(timm_name, pretrained=pretrained, num_classes=0)
        # pooled width; models with a conv head after pooling (MobileNetV3) report it as head_hidden_size
        width = getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features
        self.proj = nn.Linear(width, embed_dim)  # with bias, as the paper
        self.timm_name, self.embed_dim, self.image_size = timm_name, embed_dim, image_size

    def forward(self, images):  # (B, 3, H, W) -> (B, embed_dim), not normalised
        return self.proj(self.encoder(images))

    encode_image = forward  # the CLIP interface zeroshot.py uses for teacher and student alike


def build_student(timm_name, embed_dim, image_size=224, pretrained=False):
    """Create a Student, turning timm's errors (unknown name, weights offline) into UserErrors."""
    import timm
    if not timm.is_model(timm_name):
        raise UserError(f"unknown timm model '{timm_name}': see timm.list_models(), e.g. tiny_vit_11m_224")
    try:
        return Student(timm_name, embed_dim, image_size=image_size, pretrained=pretrained)
    except Exception as e:
        raise UserError(f"could not create student {timm_name}: {str(e).splitlines()[0][:300]}") from None


def load_student(path, device="cpu"):
    """Load a self-contained student.pt, or the student in a distill.py last.pt (a run's resume state, written
    while it trains): returns (Student in eval mode, the student.pt dict)."""
    path = Path(path)
    require(path.is_file(), f"student checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path} is not a readable torch checkpoint ({type(e).__name__})") from None
    if isinstance(ckpt, dict) and "format" not in ckpt and {"args", "timm_name", "step"} <= set(ckpt) \
            and {"state_dict", "model"} & set(ckpt):
        ckpt = resume_state_student(ckpt, path)
    require(isinstance(ckpt, dict) and ckpt.get("format") == STUDENT_FORMAT,
            f"{path} is not a student checkpoint (no format '{STUDENT_FORMAT}'); pass a distill.py "
            f"student.pt or last.pt, or an open_clip model name / local-dir:PATH")
    model = build_student(ckpt["timm_name"], ckpt["embed_dim"], image_size=ckpt["image_size"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def resume_state_student(state, path):
    """The student.pt dict of the student in a last.pt, which holds its weights and the run's args but not its
    input size and normalisation: those are the teacher's (the one its args name, loaded on the CPU) unless the
    run set --image-size."""
    args, weights = state["args"], state.get("state_dict", state.get("model"))  # "model": last.pt's key before
    try:
        teacher = load_teacher(args["teacher"], args.get("teacher_pretrained"))
    except UserError as e:
        raise UserError(f"{path} (a distill.py last.pt) needs its teacher for the input size and normalisation: "
                        f"{e}") from None
    model = build_student(state["timm_name"], weights["proj.weight"].shape[0],
                          image_size=args.get("image_size") or teacher.image_size)
    model.load_state_dict(weights)
    return student_checkpoint(model, teacher, dataset=args.get("dataset"), extra={"args": args, "step": state["step"]})


def student_checkpoint(model, teacher, classnames=None, templates=None, dataset=None, class_text_emb=None,
                       extra=None):
    """The self-contained student.pt dict: everything zeroshot.py needs to run it."""
    model = getattr(model, "module", model)          # unwrap DDP
    model = getattr(model, "_orig_mod", model)       # unwrap torch.compile
    ckpt = {
        "format": STUDENT_FORMAT,
        "timm_name": model.timm_name,
        "embed_dim": model.embed_dim,
        "image_size": model.image_size,
        "mean": list(teacher.mean),
        "std": list(teacher.std),
        "teacher": teacher.ident,
        "dataset": dataset,
        "classnames": list(classnames) if classnames is not None else None,
        "templates": list(templates) if templates is not None else None,
        "class_text_emb": class_text_emb.detach().float().cpu() if class_text_emb is not None else None,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    ckpt.update(extra or {})
    return ckpt
