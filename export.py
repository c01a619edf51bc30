"""Export a distilled student as an open_clip model, loadable anywhere open_clip loads, or as an ONNX zero-shot
classifier (`export.py onnx RUN`, fp32 and int8) that needs only numpy, Pillow and onnxruntime.

A distill.py student is a timm encoder + nn.Linear(features, embed_dim) into the teacher's embedding
space. open_clip expresses exactly that as a "timm image tower" (model config `vision_cfg.timm_model_name`,
the timm model's own pooling, `timm_proj: linear` with bias). The exported folder pairs that image tower,
holding the student's weights moved over key for key, with the teacher's text tower, tokenizer and
logit scale, and the eval preprocessing the student is evaluated with (the teacher's mean/std at the
student's input size). open_clip's own `save_for_hf` writes it: open_clip_config.json + open_clip_model.safetensors.

Before the folder is moved into place it is loaded back with open_clip and checked: encode_image equals
the student on a random batch, encode_text equals the teacher, tokens and the eval transform equal what
zeroshot.py uses for the student. A student open_clip cannot express is refused with one line, never
written as a different model: open_clip's timm tower calls timm.create_model(name) without img_size, so a
ViT-like student built at another input size than timm's default (e.g. test_vit at 32 px) does not fit.

Commands:
  python export.py runs/pets_l2     # runs/pets_l2/open_clip/ (distill.py wrote it already: left as it is)
  python export.py runs/pets_l2 --overwrite --text-dtype float16   # text tower stored in half precision
  python export.py runs/pets_l2/student.pt --teacher local-dir:/path/to/teacher --out exports/pets_l2
Then, anywhere open_clip is installed (no code from this repo needed):
  model, _, preprocess = open_clip.create_model_and_transforms("local-dir:runs/pets_l2/open_clip")
  tokenizer = open_clip.get_tokenizer("local-dir:runs/pets_l2/open_clip")
  python zeroshot.py --model local-dir:runs/pets_l2/open_clip --dataset pets

The ONNX classifier (a sub-command: it needs no teacher text tower and takes students open_clip cannot express;
helpers/onnx_export.py says what the graph computes and why its input is uint8):
  python export.py onnx runs/pets_l2 --int8         # writes runs/pets_l2/onnx/: classifier.onnx, classifier.int8.onnx,
                                                    # preprocess.json, classes.json, onnx.json (checks, sizes)
  python zeroshot.py --model runs/pets_l2/onnx/classifier.onnx --dataset pets
It is checked with onnxruntime against the PyTorch student on the run's own images before it is moved into
place (docs/export.md); int8 is kept only if its top-1 agrees with fp32 on --min-agreement of held-out images.
"""
import contextlib
import copy
import logging
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from helpers import common, models, onnx_export, run_lock
from helpers.common import UserError, require

# float32 keeps the teacher's text embeddings bit for bit (the zero-shot numbers of the folder equal
# zeroshot.py's on student.pt); float16 halves the text tower on disk (ViT-B-32: 254 MB -> 127 MB).
TEXT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
TOLERANCE = 1e-5  # max abs difference allowed between the folder's outputs and the exported weights' (fp32)
CHECK_PROMPTS = ["a photo of a cat.", "a photo of a great pyrenees, a type of pet.", "a blurry photo of a c4r!"]


@dataclass
class Args:
    """Export a distill.py student as an open_clip model folder.
    Every default here is ours (the paper and the authors' code have no export): where files go, and what is kept."""
    # input
    run: str = field(default="", metadata={"help": "distill.py run folder (holding student.pt) or a student.pt; "
                                                   "may come first without --run"})
    teacher: Optional[str] = field(default=None, metadata={"help": "override the teacher named in student.pt "
                                                                   "(open_clip name, local-dir:PATH)"})
    teacher_pretrained: Optional[str] = field(default=None, metadata={"help": "override its pretrained tag/file"})
    # output
    out: Optional[str] = field(default=None, metadata={"help": "output folder (default: <run>/open_clip)"})
    text_dtype: str = field(default="float32", metadata={"help": "how the text tower is stored (ours: float32, "
                                                                 "the teacher's own weights unchanged)",
                                                         "choices": list(TEXT_DTYPES)})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    # onnx (export.py onnx RUN): the output folder defaults to <run>/onnx
    int8: bool = field(default=False, metadata={"help": "onnx: also write classifier.int8.onnx (static quantization)"})
    min_agreement: float = field(default=0.99, metadata={"help": "onnx: keep int8 only if its top-1 agrees with "
                                                                 "fp32 on this share of held-out images (ours)"})
    images: Optional[str] = field(default=None, metadata={"help": "onnx: the run's images (default: its --data)"})
    check_images: int = field(default=32, metadata={"help": "onnx: images the fp32 graph is checked on (ours)"})
    calib_images: int = field(default=64, metadata={"help": "onnx: int8 calibration images (ours: a few dozen "
                                                             "suffice for min/max calibration)"})
    agree_images: int = field(default=256, metadata={"help": "onnx: held-out images for int8 agreement (ours: "
                                                             "1%% of 256 is 2-3 images)"})


# ----------------------------------------------------------------------------------------------
# the model config and the weights, key for key

def open_clip_config(ckpt, teacher):
    """The teacher's open_clip model config with the image tower replaced by the student.

    open_clip's TimmModel with these settings computes Linear(trunk(x)): the trunk is
    timm.create_model(name) with its classifier reset to 0 outputs and its own pooling kept
    (timm_pool ''), then nn.Linear(trunk.num_features, embed_dim, bias=True) (timm_proj_bias).
    image_size only sets the preprocessing size: open_clip does not pass it to timm.
    """
    import open_clip
    cfg = copy.deepcopy(open_clip.get_model_config(teacher.name))
    require(cfg, f"open_clip has no model config for the teacher {teacher.name}: pass --teacher NAME|local-dir:PATH")
    require(cfg["embed_dim"] == ckpt["embed_dim"], f"the student embeds into {ckpt['embed_dim']} dimensions but the "
            f"teacher {teacher.name} into {cfg['embed_dim']}: pass the student's own teacher with --teacher")
    cfg["vision_cfg"] = {"timm_model_name": ckpt["timm_name"], "timm_model_pretrained": False, "timm_pool": "",
                         "timm_proj": "linear", "timm_proj_bias": True, "image_size": ckpt["image_size"]}
    return cfg


def tower_weights(ckpt, tower):
    """student.pt weights renamed for open_clip's TimmModel (encoder.* -> trunk.*, proj.* -> head.proj.*),
    checked: every student weight used, every tower weight filled, shapes equal."""
    renamed = {}
    for key, value in ckpt["state_dict"].items():
        prefix, rest = key.split(".", 1)
        require(prefix in ("encoder", "proj"), f"student weight {key} is neither encoder.* nor proj.*: this "
                                               f"student.pt was not written by models.student_checkpoint")
        renamed[("trunk." if prefix == "encoder" else "head.proj.") + rest] = value
    wanted = tower.state_dict()
    unused = sorted(set(renamed) - set(wanted))
    unfilled = sorted(set(wanted) - set(renamed))
    shapes = [f"{k}: student {tuple(v.shape)}, open_clip {tuple(wanted[k].shape)}" for k, v in renamed.items()
              if k in wanted and v.shape != wanted[k].shape]
    if unused or unfilled or shapes:
        first = (shapes or [f"student weight {k} has no place in the tower" for k in unused]
                 or [f"tower weight {k} has no student weight" for k in unfilled])[0]
        raise UserError(f"open_clip cannot express this student: {cannot_pass_size(ckpt, tower)}its timm tower "
                        f"does not fit the student's weights ({first}; {len(unused) + len(unfilled) + len(shapes)} "
                        f"weights differ). student.pt still works with zeroshot.py")
    return renamed


def cannot_pass_size(ckpt, tower):
    """The likely cause, when it is one: open_clip builds the timm model at timm's default input size."""
    default = tower.trunk.pretrained_cfg.get("input_size", (3, 0, 0))[-1]
    if default and default != ckpt["image_size"]:
        return (f"open_clip builds {ckpt['timm_name']} at timm's default input size {default} px (it cannot pass "
                f"img_size), the student was built at {ckpt['image_size']} px (distill.py --image-size {default} "
                f"gives an exportable student); ")
    return ""


@contextlib.contextmanager
def quiet_logging():
    """open_clip logs a warning for a model built without weights (they are loaded right after): keep it off
    stderr, where errors are one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def build_open_clip(ckpt, teacher, cfg, text_dtype):
    """The open_clip model that `cfg` describes, built by open_clip, holding the student's and the teacher's
    weights (text weights rounded to text_dtype, as the folder will hold them). fp32, CPU, eval mode."""
    import open_clip
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg
    with quiet_logging():  # the teacher's own config source, no weights: open_clip builds the class it would load
        clip = open_clip.create_model(teacher.name, load_weights=False, pretrained_text=False,
                                      vision_cfg=cfg["vision_cfg"])
    text = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items() if not k.startswith("visual.")}
    require(set(text) == {k for k in clip.state_dict() if not k.startswith("visual.")},
            f"the teacher {teacher.name} differs from what open_clip builds from its config: export needs a "
            f"teacher open_clip loads by name, tag or local-dir:PATH")
    text = {k: to_text_dtype(k, v, text_dtype).to(v.dtype) for k, v in text.items()}  # rounded as stored
    image = {"visual." + k: v for k, v in tower_weights(ckpt, clip.visual).items()}
    clip.load_state_dict({**text, **image}, strict=True)
    # what zeroshot.py evaluates the student with (models.eval_transform): the teacher's mean/std at the
    # student's size, open_clip's default interpolation and resize mode
    pp = PreprocessCfg(size=ckpt["image_size"], mean=tuple(teacher.mean), std=tuple(teacher.std))
    set_model_preprocess_cfg(clip, vars(pp))
    return clip.eval()


def to_text_dtype(key, value, text_dtype):
    """A text-tower tensor in the storage dtype; logit scale/bias and integer buffers stay as they are."""
    if key in ("logit_scale", "logit_bias") or not value.is_floating_point():
        return value
    return value.to(TEXT_DTYPES[text_dtype])


# ----------------------------------------------------------------------------------------------
# checks: the written folder computes what was exported

def check_close(what, got, want, tol=TOLERANCE):
    """One line unless |got - want| <= tol everywhere (want's magnitude above 1 scales tol)."""
    diff = (got.float() - want.float()).abs().max().item()
    scale = max(1.0, want.float().abs().max().item())
    require(diff <= tol * scale, f"the exported open_clip model's {what} differs from what was exported by up "
                                 f"to {diff:.3g} (allowed {tol * scale:.3g}): open_clip cannot express this model "
                                 f"exactly, so it was not exported")
    return diff


def expected_outputs(clip, ckpt, tokenizer):
    """What the folder must compute: the student on a random batch (rebuilt on CPU from its weights, as
    zeroshot.py loads student.pt), the text tower on a few prompts, the eval transform of a random image."""
    reference = models.build_student(ckpt["timm_name"], ckpt["embed_dim"], image_size=ckpt["image_size"])
    reference.load_state_dict(ckpt["state_dict"])
    size = ckpt["image_size"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=gen)  # (2, 3, S, S)
    tokens = tokenizer(CHECK_PROMPTS)  # (P, context_length)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size + 13, size + 7, 3), dtype=np.uint8))
    with torch.no_grad():
        return {"images": images, "image_emb": reference.eval()(images), "tokens": tokens,
                "text_emb": clip.encode_text(tokens), "picture": picture,
                "pixels": models.eval_transform(size, ckpt["mean"], ckpt["std"])(picture)}


def verify(folder, ckpt, expected):
    """Load `folder` with open_clip as a user would and compare; returns the image embedding's max difference."""
    import open_clip
    name = "local-dir:" + str(folder)
    try:
        with quiet_logging():
            clip, _, preprocess = open_clip.create_model_and_transforms(name)
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:
        raise UserError(f"open_clip cannot load the exported folder ({common.first_line(e)}), so it was not "
                        f"exported") from None
    clip.eval()
    with torch.no_grad():
        try:
            image_emb = clip.encode_image(expected["images"])  # (2, D)
        except Exception as e:
            raise UserError(f"open_clip cannot express this student: {cannot_pass_size(ckpt, clip.visual)}its "
                            f"timm tower fails on the student's {ckpt['image_size']} px input "
                            f"({common.first_line(e)}). student.pt still works with zeroshot.py") from None
        diff = check_close("encode_image", image_emb, expected["image_emb"])
        require(torch.equal(tokenizer(CHECK_PROMPTS), expected["tokens"]),
                "the exported folder's tokenizer differs from the teacher's, so it was not exported")
        check_close("encode_text", clip.encode_text(expected["tokens"]), expected["text_emb"])
    require(torch.equal(preprocess(expected["picture"]), expected["pixels"]),
            "the exported folder's eval transform differs from the student's, so it was not exported")
    return diff


# ----------------------------------------------------------------------------------------------
# writing: a temp folder next to the target, renamed into place

class BundledTokenizer:
    """Stands in for open_clip's default tokenizer (SimpleTokenizer) in save_for_hf: that one ships with
    open_clip and the config alone names it, so there are no tokenizer files to write."""

    def save_pretrained(self, folder):
        pass


def write_folder(clip, cfg, tokenizer, folder, text_dtype):
    """open_clip's save_for_hf into a fresh hidden folder next to `folder`; returns that folder."""
    from open_clip.push_to_hf_hub import save_for_hf
    for key, param in clip.named_parameters():  # float16: stored in half; open_clip casts to fp32 when it loads
        if not key.startswith("visual."):
            param.data = to_text_dtype(key, param.data, text_dtype)
    common.prepare_out_dir(folder.parent, "--out")
    tmp = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    if not hasattr(tokenizer, "save_pretrained"):
        tokenizer = BundledTokenizer()
    try:
        save_for_hf(clip, tokenizer, cfg, tmp, safe_serialization=True)  # safetensors only: no pickle, one copy
        common.honour_umask(tmp)  # safetensors writes its file 0600: others could not read a shared run's model
    except (RuntimeError, ValueError, SafetensorError) as e:  # e.g. safetensors refuses tensors that share memory
        shutil.rmtree(tmp, ignore_errors=True)
        code = re.search(r"os error (\d+)", str(e))  # safetensors' text of a failed write (a full disk): the OSError
        if code:  # it is, which @entrypoint prints as one line with what to do
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(folder)) from None
        raise UserError(f"open_clip could not write the model: {common.first_line(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def same_files(a, b):
    """Folders a and b hold the same file names with the same bytes."""
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def check_out(folder, overwrite):
    """Refuse early (nothing loaded, nothing written): the output is a file, or exists without --overwrite and is
    not an open_clip folder (an earlier export of the same student is left as it is, see export_open_clip)."""
    require(not folder.exists() or folder.is_dir(), f"{folder} is a file, not a folder: pass --out FOLDER")
    require(overwrite or not folder.exists() or (folder / "open_clip_config.json").is_file(),
            f"{folder} exists: pass --overwrite to replace it, or --out elsewhere")


def export_open_clip(student, teacher, folder, text_dtype="float32", overwrite=False):
    """Write `student` (models.Student) with `teacher`'s text tower (models.Teacher) as an open_clip model folder.

    The folder appears complete or not at all; it is loaded back and checked before it is moved into place.
    An existing folder is replaced with overwrite=True; without it, a folder holding the same bytes (the same
    export again) is left as it is, and any other is refused. A student open_clip cannot express raises UserError.
    Returns the folder's Path.
    """
    require(text_dtype in TEXT_DTYPES, f"text_dtype must be one of {', '.join(TEXT_DTYPES)}, not {text_dtype}")
    folder = Path(folder).expanduser()
    check_out(folder, overwrite)
    ckpt = models.student_checkpoint(student, teacher)  # unwrapped, CPU copies of the weights
    cfg = open_clip_config(ckpt, teacher)
    clip = build_open_clip(ckpt, teacher, cfg, text_dtype)
    expected = expected_outputs(clip, ckpt, teacher.tokenizer)
    tmp = write_folder(clip, cfg, teacher.tokenizer, folder, text_dtype)
    try:
        diff = verify(tmp, ckpt, expected)
        if folder.exists() and not overwrite:
            require(same_files(tmp, folder), f"{folder} holds another export (another student, teacher or "
                                             f"--text-dtype): pass --overwrite to replace it, or --out elsewhere")
            print(f"{folder} already holds this export: left as it is")
            return folder
        common.move_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    image_params = sum(p.numel() for p in clip.visual.parameters())
    text_params = sum(p.numel() for k, p in clip.named_parameters() if not k.startswith("visual."))
    megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    print(f"wrote {folder} ({megabytes:.1f} MB): image tower {ckpt['timm_name']} {image_params / 1e6:.2f}M params "
          f"at {ckpt['image_size']} px (encode_image max diff {diff:.1e}), text tower of {teacher.name} "
          f"{text_params / 1e6:.2f}M params in {text_dtype}")
    return folder


# ----------------------------------------------------------------------------------------------
# the command line: a finished run folder

def find_student(run):
    """The student.pt of a finished distill.py run folder (or the file itself)."""
    require(run, "give the run to export: python export.py runs/NAME (a distill.py --out folder)")
    path = Path(run).expanduser()
    require(path.exists(), f"{path} does not exist: give a distill.py run folder (holding student.pt) or a student.pt")
    if path.is_file():
        return path
    if (path / "student.pt").is_file():
        return path / "student.pt"
    if (path / "last.pt").is_file():
        raise UserError(f"{path} has no student.pt: the run has not finished (last.pt is its resume state); finish "
                        f"it with distill.py ... --out {path} --resume, then export")
    raise UserError(f"{path} has no student.pt, so it is not a finished distill.py run: give a run's --out folder")


def load_its_teacher(ckpt, args, path):
    """The teacher named in student.pt, or --teacher/--teacher-pretrained; same mean/std as the student's."""
    ident = ckpt.get("teacher") or {}
    name = args.teacher or ident.get("model")
    require(name, f"{path} names no teacher: pass --teacher NAME|local-dir:PATH")
    pretrained = args.teacher_pretrained if args.teacher_pretrained is not None else ident.get("pretrained")
    teacher = models.load_teacher(name, pretrained)
    require(np.allclose(teacher.mean, ckpt["mean"]) and np.allclose(teacher.std, ckpt["std"]),
            f"the student was trained with mean {ckpt['mean']} / std {ckpt['std']}, the teacher {teacher.name} "
            f"normalises with {list(teacher.mean)} / {list(teacher.std)}: pass the student's own teacher")
    return teacher


def export_onnx(args, path, folder):
    """`export.py onnx RUN`: the student and its class text embeddings as one ONNX graph (helpers/onnx_export.py)."""
    require(0 < args.min_agreement <= 1, "--min-agreement must be a share in (0, 1]")
    require(min(args.check_images, args.calib_images, args.agree_images) > 0, "image counts must be positive")
    student, ckpt = models.load_student(path)
    run_args = ckpt.get("args") or {}
    images = args.images or run_args.get("data")
    require(images, f"{path} does not name the images it was trained on: pass --images DIR")
    classnames, templates, text = ckpt.get("classnames"), ckpt.get("templates"), ckpt.get("class_text_emb")
    require(classnames and templates, f"{path} holds no class names: it was not trained on a dataset's classes")
    if text is None:  # an l2 run stores no text embeddings: its teacher's text tower builds them
        import zeroshot
        text = zeroshot.build_classifier(load_its_teacher(ckpt, args, path), classnames, templates)
    meta = {"image_size": ckpt["image_size"], "mean": list(ckpt["mean"]), "std": list(ckpt["std"]),
            "classnames": list(classnames), "templates": list(templates), "timm_name": ckpt["timm_name"],
            "embed_dim": ckpt["embed_dim"], "teacher": ckpt.get("teacher"), "dataset": ckpt.get("dataset"),
            "image_params": sum(p.numel() for p in student.parameters())}
    record = onnx_export.export_classifier(student, meta, text, folder, images, args.check_images, args.int8,
                                           args.calib_images, args.agree_images, args.min_agreement)
    c, q = record["check"], record["int8"]
    print(f"wrote {folder}: {ckpt['timm_name']} at {ckpt['image_size']} px -> {len(classnames)} classes, opset "
          f"{record['opset']}; onnxruntime vs PyTorch on {c['images']} of the run's images: min cosine "
          f"{c['min_cosine']:.7f}, max logit diff {c['max_logit_diff']:.1e}, top-1 agree {100 * c['top1_agree']:.0f}%"
          f" | " + ", ".join(f"{k} {v:.1f} MB" for k, v in record["sizes_mb"].items()))
    if q:
        print(f"int8: top-1 agrees with fp32 on {100 * q['top1_agree']:.1f}% of {q['images']} held-out images "
              f"(min cosine {q['min_cosine']:.4f}); " + ("kept" if q["kept"] else "not kept"))
        if not q["kept"]:
            print(f"warning: classifier.int8.onnx not kept: top-1 agreement {100 * q['top1_agree']:.1f}% is below "
                  f"--min-agreement {100 * args.min_agreement:g}%", file=sys.stderr)
    return record


@common.entrypoint
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    onnx = argv[:1] == ["onnx"]  # `python export.py onnx runs/pets_l2`: the ONNX classifier
    argv = argv[1:] if onnx else argv
    if argv and not argv[0].startswith("-"):  # `python export.py runs/pets_l2`: the run comes first
        argv = ["--run"] + argv
    args = common.parse_args(Args, argv, description=__doc__)
    path = find_student(args.run)
    folder = Path(args.out).expanduser() if args.out else path.parent / ("onnx" if onnx else "open_clip")
    check_out(folder, args.overwrite)
    # one writer: the folder that holds the output (a run folder, by default) is locked, as distill.py locks it
    lock = run_lock.lock_run_folder(common.prepare_out_dir(folder.parent, "--out", create=False), "--out")
    try:
        run_lock.remove_stale_temps(folder.parent)  # what a killed export or run left there
        if onnx:
            return export_onnx(args, path, folder)
        student, ckpt = models.load_student(path)
        teacher = load_its_teacher(ckpt, args, path)
        return export_open_clip(student, teacher, folder, text_dtype=args.text_dtype, overwrite=args.overwrite)
    except BaseException:
        lock.release(undo=True)  # a refused export leaves no folder it created
        raise


if __name__ == "__main__":
    main()
