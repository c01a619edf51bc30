"""`bench.py onnx`: CPU latency and throughput of the deployed zero-shot classifier (helpers/onnx_export.py) in
PyTorch eager fp32, onnxruntime fp32 and onnxruntime int8, for the students and the teacher's image tower (random
weights: speed does not depend on them), at each batch and thread count; the files' sizes; int8's top-1 agreement
with fp32 on held-out images (smooth random images, calibration on others: random weights make this a stress
test, trained weights have larger margins).
"""
import os
import tempfile
from pathlib import Path

import torch

from helpers import models, onnx_export
from helpers.bench_timing import markdown, save_random_teacher, time_call

CLASSES = 37  # ours: Pets' class count, the matrix in the graph (its size hardly matters next to the encoder)


def smooth_images(n, size, seed):
    """(n, S, S, 3) uint8 of upsampled noise: closer to photos' statistics than pixel noise, for calibration."""
    small = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic", align_corners=False)
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class PlainClassifier(torch.nn.Module):
    """The baseline: a plain export of student + head + class matrix, fed float NCHW images that the caller has
    already normalised (the graph of the classifier does that itself, from uint8 NHWC)."""

    def __init__(self, classifier):
        super().__init__()
        self.student, self.class_text_emb = classifier.student, classifier.class_text_emb

    def forward(self, x):  # (B, 3, S, S) float, normalised
        emb = torch.nn.functional.normalize(self.student(x), dim=-1)  # (B, D)
        return emb, 100.0 * emb @ self.class_text_emb.t()  # (B, C)


def encoders(args, tmp):
    """name -> (image encoder, embed_dim): the teacher's image tower (unless --teacher none) and the students."""
    out = {}
    if args.teacher.lower() != "none":
        spec = save_random_teacher(args.teacher, Path(tmp) / "teacher")
        teacher = models.load_teacher(spec, None)
        out[f"{args.teacher} image tower (teacher)"] = (teacher.model.visual, teacher.embed_dim, teacher.image_size)
    for name in list(args.students) + list(args.student):
        out[name] = (models.build_student(name, 512, image_size=args.image_size), 512, args.image_size)
    return out


def bench_onnx(args, device):
    threads = sorted({1, os.cpu_count() or 1})
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (encoder, dim, size) in encoders(args, tmp).items():
            torch.manual_seed(0)
            text = torch.nn.functional.normalize(torch.randn(CLASSES, dim), dim=-1)
            model = onnx_export.Classifier(encoder.eval(), text, models.OPENAI_CLIP_MEAN, models.OPENAI_CLIP_STD)
            fp32, int8, plain = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "plain.onnx"
            onnx_export.export_graph(model.eval(), size, fp32, {})
            onnx_export.export_graph(PlainClassifier(model).eval(), size, plain, {},
                                     example=torch.randn(2, 3, size, size))
            onnx_export.quantize_int8(fp32, int8, smooth_images(32, size, seed=1))
            held_out = smooth_images(64, size, seed=2)
            agree = onnx_export.compare(onnx_export.run_batches(onnx_export.session(fp32), held_out),
                                        onnx_export.run_batches(onnx_export.session(int8), held_out), logit_tol=0)
            torch_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
            sizes = {"torch": torch_mb, "fp32": onnx_export.file_mb(fp32), "int8": onnx_export.file_mb(int8)}
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                sessions = {"plain onnxruntime fp32": onnx_export.session(plain, n_threads),
                            "onnxruntime fp32": onnx_export.session(fp32, n_threads),
                            "onnxruntime int8": onnx_export.session(int8, n_threads)}
                for batch in args.batches:
                    x = smooth_images(batch, size, seed=3)
                    xt = torch.from_numpy(x)
                    with torch.no_grad():  # the plain graph's input, normalised outside the timing
                        x_float = ((xt.permute(0, 3, 1, 2).float() / 255 - model.mean) / model.std).numpy()

                    def eager():
                        with torch.inference_mode():
                            model(xt)
                    ms = {"PyTorch eager fp32": 1000 * time_call(eager, device, args.warmup, args.runs)}
                    for k, sess in sessions.items():
                        feed = {sess.get_inputs()[0].name: x_float if k.startswith("plain") else x}
                        ms[k] = 1000 * time_call(lambda: sess.run(None, feed), device, args.warmup, args.runs)
                    base = ms["PyTorch eager fp32"]
                    rec = {"model": name, "threads": n_threads, "batch": batch, "ms": ms, "sizes_mb": sizes,
                           "int8_top1_agree": agree["top1_agree"], "int8_min_cosine": agree["min_cosine"]}
                    records.append(rec)
                    rows.append([name, n_threads, batch] + [f"{v:.1f} ({base / v:.2f}x)" for v in ms.values()] +
                                [f"{ms['plain onnxruntime fp32'] / ms['onnxruntime fp32']:.2f}x",
                                 f"{batch * 1000 / ms['onnxruntime int8']:.1f}",
                                 f"{ms['onnxruntime fp32'] / ms['onnxruntime int8']:.2f}x",
                                 f"{100 * agree['top1_agree']:.1f}%",
                                 f"{sizes['torch']:.1f} / {sizes['fp32']:.1f} / {sizes['int8']:.1f}"])
    header = ["classifier (uint8 in, logits out)", "threads", "batch", "PyTorch eager fp32 ms",
              "plain export, float in: onnxruntime fp32 ms (x eager)", "onnxruntime fp32 ms (x eager)",
              "onnxruntime int8 ms (x eager)", "classifier fp32 vs plain", "int8 img/s", "int8 vs fp32",
              f"int8 top-1 = fp32 ({64} held out)", "MB torch / fp32 / int8"]
    return markdown(header, rows), records
