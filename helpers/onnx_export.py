"""The student as a deployable zero-shot classifier in ONNX: build the graph, export it, check it against PyTorch,
quantize it to int8, and run it (zeroshot.py, bench.py, export.py share this).

The graph: uint8 images (B, S, S, 3), already resized and centre-cropped (what PIL + numpy.asarray give) ->
normalisation -> student -> unit embedding (B, D) and logits (B, C) = 100 * embedding @ class_text_emb^T.
Why uint8 NHWC in, normalisation inside: the deployment code then needs no float maths, no mean/std and no
transpose (a mistake there is the usual cause of an export that "differs from PyTorch"); the graph computes
exactly the ToTensor + Normalize steps of the PyTorch eval transform (x / 255, then (x - mean) / std), and the
input is 4x smaller than float32. The class text embeddings are a constant of the graph: no text tower and no
tokenizer are shipped, so the class names (in the graph's metadata and classes.json) are fixed at export.
"""
import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from helpers import common
from helpers.common import UserError, require

FORMAT = "zsd-onnx-classifier/1"  # metadata key "format" of every classifier.onnx
INPUT, OUTPUTS = "images", ("embedding", "logits")
COSINE_MIN = 0.9999  # ours: embedding cosine onnxruntime vs PyTorch, the least a check accepts (fp32 gives ~1 - 1e-7)
LOGIT_TOL = 0.01     # ours: max |logit difference| (logits span +-100; fp32 rounding gives ~1e-4)


class Classifier(nn.Module):
    """uint8 (B, S, S, 3) -> (unit embedding (B, D), logits (B, C)), the whole zero-shot classifier."""

    def __init__(self, student, class_text_emb, mean, std):
        super().__init__()
        self.student = student
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("class_text_emb", class_text_emb.float())  # (C, D), unit rows (zeroshot.py's)

    def forward(self, images):  # (B, S, S, 3) uint8
        x = images.permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S), as torchvision's ToTensor
        x = (x - self.mean) / self.std  # as torchvision's Normalize
        emb = F.normalize(self.student(x), dim=-1)  # (B, D)
        return emb, 100.0 * emb @ self.class_text_emb.t()  # (B, C)


# ----------------------------------------------------------------------------------------------
# preprocessing: resize + centre crop, exactly as the PyTorch eval transform (open_clip's) before ToTensor

def crop_transform(size):
    """PIL image -> resized, centre-cropped RGB PIL image: open_clip's eval transform up to (without) ToTensor +
    Normalize, which the graph does."""
    import open_clip
    import torchvision.transforms as T
    full = open_clip.image_transform(size, is_train=False)  # Resize(bicubic, short side), CenterCrop, RGB, ...
    steps = [t for t in full.transforms if not isinstance(t, T.Normalize) and "ToTensor" not in type(t).__name__]
    return T.Compose(steps + [lambda im: im.convert("RGB")])


class ToTensorUint8:
    """PIL image -> (S, S, 3) uint8 tensor: the graph's input, where a PyTorch model's transform has ToTensor +
    Normalize (so zeroshot.py --corruption finds the same place to corrupt the cropped image)."""

    def __call__(self, im):
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())

    def __repr__(self):
        return "ToTensorUint8()"


def uint8_transform(size):
    """PIL image -> (S, S, 3) uint8 tensor, the graph's input for one image (zeroshot.py's data loader)."""
    import torchvision.transforms as T
    return T.Compose([*crop_transform(size).transforms, ToTensorUint8()])


def preprocess_config(size, mean, std):
    """preprocess.json: what the deployment code does before the graph, and what the graph does itself."""
    return {"input": f"uint8 array (batch, {size}, {size}, 3), RGB", "resize": size, "resize_mode": "shortest side",
            "interpolation": "bicubic", "crop": "center", "crop_size": [size, size], "in_graph": "x / 255, then "
            "(x - mean) / std", "mean": list(mean), "std": list(std), "outputs": list(OUTPUTS)}


def load_images(paths, size):
    """(N, S, S, 3) uint8 for image files, through crop_transform."""
    crop = crop_transform(size)
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(crop(im), dtype=np.uint8))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# export, run, compare

def export_graph(classifier, size, path, meta, example=None):
    """torch.onnx (dynamo exporter, onnxscript) -> path, dynamic batch, metadata written into the model. example:
    an input of batch 2 (default: uint8 images, the classifier's input; 1 would be specialised)."""
    import onnx
    classifier = classifier.eval()
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8) if example is None else example
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet():  # torch.onnx prints its progress, warns per module
            program = torch.onnx.export(classifier, (example,), dynamo=True, input_names=[INPUT],
                                    output_names=list(OUTPUTS), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        external_data=False)
    except Exception as e:  # torch.export raises many types with long texts
        cause = e.__cause__ or e  # torch.onnx wraps the real error in a page of advice
        text = re.sub("\x1b\\[[0-9;]*m", "", common.first_line(cause))  # without terminal colours
        raise UserError(f"torch.onnx cannot export this student ({type(cause).__name__}: {text})") from None
    model = program.model_proto
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))
    return model.opset_import[0].version


def session(path, threads=0):
    """An onnxruntime CPU session (threads 0: onnxruntime's default, all cores)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: warnings would break one-line output
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batches(sess, images, batch=32):
    """(embedding (N, D), logits (N, C)) float32 from a session, in batches."""
    embs, logits = [], []
    for i in range(0, len(images), batch):
        e, lg = sess.run(list(OUTPUTS), {INPUT: images[i:i + batch]})
        embs.append(e)
        logits.append(lg)
    return np.concatenate(embs), np.concatenate(logits)


def torch_outputs(classifier, images):
    with torch.inference_mode():
        emb, logits = classifier(torch.from_numpy(images))
    return emb.numpy(), logits.numpy()


def compare(ref, got, logit_tol=LOGIT_TOL):
    """Parity numbers of (emb, logits) pairs: min cosine, max |logit diff|, top-1 agreement; a top-1 difference
    counts only where the reference's two best classes are further apart than logit_tol (else a tie)."""
    (e0, l0), (e1, l1) = ref, got
    cos = (e0 * e1).sum(1) / (np.linalg.norm(e0, axis=1) * np.linalg.norm(e1, axis=1))
    top2 = np.sort(l0, axis=1)[:, -2:] if l0.shape[1] > 1 else np.concatenate([l0, l0 - 1e9], 1)
    decided = (top2[:, 1] - top2[:, 0]) > logit_tol
    same = l0.argmax(1) == l1.argmax(1)
    return {"images": len(e0), "min_cosine": float(cos.min()), "max_logit_diff": float(np.abs(l0 - l1).max()),
            "top1_agree": float(same.mean()), "top1_differ_decided": int((~same & decided).sum())}


def check_parity(classifier, path, images):
    """onnxruntime (CPU) against PyTorch on `images`: cosine >= COSINE_MIN, logits within LOGIT_TOL, same top-1."""
    p = compare(torch_outputs(classifier, images), run_batches(session(path), images))
    require(p["min_cosine"] >= COSINE_MIN and p["max_logit_diff"] <= LOGIT_TOL and not p["top1_differ_decided"],
            f"the ONNX graph differs from the PyTorch student on {p['images']} of the run's images (min cosine "
            f"{p['min_cosine']:.7f}, need >= {COSINE_MIN}; max logit diff {p['max_logit_diff']:.2g}, allowed "
            f"{LOGIT_TOL}; {p['top1_differ_decided']} top-1 differ), so it was not exported")
    return p


class ImageReader:
    """onnxruntime's CalibrationDataReader: the calibration images in batches of 8."""

    def __init__(self, images, batch=8):
        self.batches = iter([{INPUT: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(fp32_path, int8_path, calib_images):
    """onnxruntime static quantization (QDQ, int8 weights per channel, uint8 activations, min/max calibration on
    the run's own synthetic images). The class matrix product and everything after the student stay fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    CalibrationDataReader.register(ImageReader)
    model = onnx.load(str(fp32_path))
    keep = after(model.graph, OUTPUTS[0])  # the class matrix product: logits stay as exact as the embedding
    pre = Path(str(int8_path) + ".pre.onnx")
    try:
        with quiet():
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(int8_path), ImageReader(calib_images), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            nodes_to_exclude=keep)
    finally:
        pre.unlink(missing_ok=True)
    q = onnx.load(str(int8_path))
    del q.metadata_props[:]  # the quantizer's own keys and a partial copy: the fp32 graph's metadata, once
    q.metadata_props.extend(model.metadata_props)
    onnx.save(q, str(int8_path))


def after(graph, tensor):
    """Names of the nodes computed from `tensor` (directly or not), in a topologically sorted ONNX graph."""
    reached, names = {tensor}, []
    for node in graph.node:
        if reached.intersection(node.input):
            reached.update(node.output)
            names.append(node.name)
    return names


def read_classifier(path):
    """(metadata dict, session) of a classifier.onnx; a file that is not one of ours is one line."""
    import onnx
    path = Path(path)
    require(path.is_file(), f"{path} does not exist: give a classifier.onnx written by export.py onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{path} is not a readable ONNX model ({common.first_line(e)})") from None
    meta = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:  # keys of other tools (onnx.infer, ...) are plain text
            pass
    require(meta.get("format") == FORMAT and [i.name for i in model.graph.input] == [INPUT] and
            [o.name for o in model.graph.output] == list(OUTPUTS),
            f"{path} is not a zero-shot classifier written by export.py onnx (no '{FORMAT}' metadata, or inputs/"
            f"outputs other than {INPUT} -> {', '.join(OUTPUTS)})")
    return meta, session(path)


class OnnxEncoder(nn.Module):
    """A classifier.onnx behind zeroshot.py's model interface: uint8 (B, S, S, 3) in; no parameters of its own."""

    def __init__(self, sess):
        super().__init__()
        self.sess = sess

    def logits(self, images):  # (B, S, S, 3) uint8 -> (B, C) float32
        return torch.from_numpy(self.sess.run([OUTPUTS[1]], {INPUT: images.cpu().numpy()})[0])

    def encode_image(self, images):  # (B, D), unit length
        return torch.from_numpy(self.sess.run([OUTPUTS[0]], {INPUT: images.cpu().numpy()})[0])


def load_encoder(path):
    """(metadata, OnnxEncoder) of a classifier.onnx, for zeroshot.py."""
    meta, sess = read_classifier(path)
    return meta, OnnxEncoder(sess)


def graph_classes(meta, classnames, templates):
    """The class matrix's place holder (C, 0) for zeroshot.py, once the dataset's classes are the graph's."""
    ours = meta["classnames"]
    if list(classnames) != ours:
        other = next((f"'{a}' vs '{b}' at class {i}" for i, (a, b) in enumerate(zip(classnames, ours)) if a != b),
                     f"{len(classnames)} vs {len(ours)} classes")
        own = meta.get("dataset") or "the run's"
        raise UserError(f"the ONNX classifier was exported for other classes than the dataset's ({other}): its "
                        f"class matrix is fixed, so evaluate it on its own dataset ({own}) or export a run trained "
                        f"on these classes")
    if list(templates) != meta["templates"]:
        print(f"warning: the ONNX classifier's class matrix was built from its own {len(meta['templates'])} "
              f"prompt templates, not the {len(templates)} asked for", file=sys.stderr)
    return torch.zeros(len(ours), 0)


def file_mb(path):
    return os.path.getsize(path) / 1e6


@contextlib.contextmanager
def quiet():
    """torch.onnx and onnxruntime.quantization log and warn per weight or module: keep that off stderr, where
    errors are one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


# ----------------------------------------------------------------------------------------------
# export.py onnx: the folder, written to a temp folder, checked, renamed into place

def pick_images(folder, n_check, n_calib, n_agree, seed=0):
    """Image paths of a run's synth.py folder (or any image folder), in a seeded order: the fp32 check's images,
    the int8 calibration images and, disjoint from those, the held-out images int8 agreement is measured on."""
    folder = Path(folder)
    require(folder.is_dir(), f"the run's images {folder} are gone: pass --images DIR (a folder of the run's images)")
    if (folder / "manifest.jsonl").is_file():
        paths = [folder / p for p, _ in common.load_manifest(folder)[0]]
    else:
        paths = [folder / p for p in common.list_images(folder)]
    require(paths, f"{folder} holds no image: pass --images DIR (a folder of the run's images)")
    order = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]
    return order[:n_check], order[:n_calib], order[n_calib:n_calib + n_agree]


def write_folder(tmp, classifier, meta, check_paths):
    """classifier.onnx, preprocess.json, classes.json into tmp; the graph checked against PyTorch."""
    size = meta["image_size"]
    opset = export_graph(classifier, size, tmp / "classifier.onnx", meta)
    parity = check_parity(classifier, tmp / "classifier.onnx", load_images(check_paths, size))
    common.save_json(preprocess_config(size, meta["mean"], meta["std"]), tmp / "preprocess.json")
    common.save_json(meta["classnames"], tmp / "classes.json")
    return opset, parity


def add_int8(tmp, size, calib_paths, agree_paths, min_agreement):
    """classifier.int8.onnx, kept if its top-1 agrees with fp32 on >= min_agreement of the held-out images."""
    require(calib_paths and agree_paths, f"--int8 needs images to calibrate on and held-out images to check: the "
                                         f"run has {len(calib_paths) + len(agree_paths)}, lower --calib-images")
    quantize_int8(tmp / "classifier.onnx", tmp / "classifier.int8.onnx", load_images(calib_paths, size))
    held_out = load_images(agree_paths, size)
    p = compare(run_batches(session(tmp / "classifier.onnx"), held_out),
                run_batches(session(tmp / "classifier.int8.onnx"), held_out), logit_tol=0)
    p.update(min_agreement=min_agreement, kept=p["top1_agree"] >= min_agreement,
             calibration_images=len(calib_paths))
    if not p["kept"]:
        (tmp / "classifier.int8.onnx").unlink()
    return p


def export_classifier(student, meta, class_text_emb, folder, images, check_images=32, int8=False,
                      calib_images=64, agree_images=256, min_agreement=0.99):
    """Write `folder` (classifier.onnx [+ classifier.int8.onnx], preprocess.json, classes.json, onnx.json): the
    student as a zero-shot classifier over meta["classnames"], checked against PyTorch before it appears.
    meta: what the graph's metadata holds (image_size, mean, std, classnames, templates, ...). Returns onnx.json."""
    folder = Path(folder)
    check_paths, calib_paths, agree_paths = pick_images(images, check_images, calib_images, agree_images)
    classifier = Classifier(student.cpu().eval(), class_text_emb, meta["mean"], meta["std"]).eval()
    meta = {"format": FORMAT, **meta}
    tmp = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        opset, parity = write_folder(tmp, classifier, meta, check_paths)
        record = {"opset": opset, "check": {**parity, "cosine_min": COSINE_MIN, "logit_tol": LOGIT_TOL},
                  "int8": add_int8(tmp, meta["image_size"], calib_paths, agree_paths, min_agreement) if int8 else None}
        record["sizes_mb"] = {p.name: round(file_mb(p), 3) for p in sorted(tmp.glob("*.onnx"))}
        common.save_json(record, tmp / "onnx.json")
        common.move_into_place(tmp, folder)  # --overwrite: the old folder goes only once the new one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
