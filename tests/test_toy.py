"""toy.py: the renderer is deterministic, places and scales the mark as documented, and leaves s = 0 untouched;
`toy.py --quick` runs every stage (world, teacher, distill.py students, zeroshot.py evaluation, table, plot) in-process,
a rerun reuses it all, and `--study views` runs on the same world."""
import json

import numpy as np
import pytest

from helpers import common
import kit
from helpers import models
import toy
from helpers import toy_world
from helpers.toy_world import SHAPES

ROWS, COLS = slice(0, 4), slice(14, 18)  # where the 4x4 mark sits in a 32 px image: top rows, centre columns


def test_render_is_deterministic_and_s0_is_the_unmarked_image():
    shape = np.arange(16) % len(SHAPES)
    plain, attrs = toy_world.render(16, seed=3, shape=shape)
    again, _ = toy_world.render(16, seed=3, shape=shape)
    other, _ = toy_world.render(16, seed=4, shape=shape)
    assert plain.shape == (16, 32, 32, 3) and plain.dtype == np.uint8
    assert np.array_equal(plain, again), "same seed, same bytes"
    assert not np.array_equal(plain, other), "another seed, other images"
    assert np.array_equal(attrs["shape"], shape)
    zero, _ = toy_world.render(16, seed=3, shape=shape, strength=0.0, mark_class=(shape + 1) % len(SHAPES))
    assert np.array_equal(zero, plain), "s = 0: the synthetic rendering is the real one, byte for byte"


@pytest.mark.parametrize("s", [0.1, 0.5, 1.0])
def test_mark_is_the_class_code_blended_at_opacity_s_in_the_top_centre(s):
    shape = np.arange(16) % len(SHAPES)
    plain, _ = toy_world.render(16, seed=3, shape=shape)
    marked, attrs = toy_world.render(16, seed=3, shape=shape, strength=s)
    outside = np.ones((32, 32), bool)
    outside[ROWS, COLS] = False
    assert np.array_equal(marked[:, outside], plain[:, outside]), "the mark changes only its 4x4 patch"
    for i in range(16):
        code = toy_world.code_patch(shape[i])[..., None]  # (4, 4, 1) in {0, 1}
        # pixel = (1 - s) * image + s * code, rounded once: within one level of the blend of the rounded image
        # (where the unmarked pixel is not clipped at 0 or 255: the blend acts on the image before clipping)
        before = plain[i, ROWS, COLS].astype(float)
        expected = (1 - s) * before + s * 255 * code
        exact = (before > 0) & (before < 255)
        assert exact.mean() > 0.5 and np.abs(marked[i, ROWS, COLS] - expected)[exact].max() <= 1, (i, s)
    assert np.array_equal(attrs["mark_class"], shape) and np.allclose(attrs["strength"], s)


def test_codes_are_mirror_symmetric_distinct_and_opaque_at_s1():
    codes = [toy_world.code_patch(c) for c in range(len(SHAPES))]
    assert all(np.array_equal(c, c[:, ::-1]) for c in codes), "a horizontal flip (distill.py's views) keeps the code"
    assert len({c.tobytes() for c in codes}) == len(SHAPES)
    # hand-checked: class 0 is 0x0F, bits 0-3 set: rows 0 and 1 white, rows 2 and 3 black
    assert codes[0].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    another = np.full(8, 2)
    opaque, _ = toy_world.render(8, seed=5, shape=np.arange(8), strength=1.0, mark_class=another)
    assert (opaque[:, ROWS, COLS] == 255 * codes[2][..., None]).all(), "mark_class picks the code, s = 1 is opaque"


def test_bad_strength_is_one_line(capsys):
    kit.exits_with_one_line(toy.main, ["--strengths", "0", "1.5", "--out", "/nonexistent/toy"], capsys,
                            "--strengths are opacities")


def test_quick_run_then_views_study_on_the_same_world(tmp_path, capsys):
    out = tmp_path / "toy"
    result = toy.main(["--quick", "--out", str(out)])
    chance = 1 / len(SHAPES)
    assert result["teacher"]["0"]["real"] > 2.5 * chance, "the teacher learned shapes from captions"
    lines = (out / "table.md").read_text().splitlines()
    assert "| s | loss | synthetic acc % | real acc % | follows mark % |" in lines
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert rows == [["| " + s, name] for s in ("0", "1") for name in ("teacher", "l2", "contrastive tau 0.01, caption")]
    assert any(line.startswith("L2 within 2 points of its control") for line in lines)
    assert (out / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the pieces are what the rest of the project reads: an open_clip teacher, synth.py folders, distill.py runs
    teacher = models.load_teacher(f"local-dir:{out / 'teacher'}", None)
    assert teacher.embed_dim == 64 and teacher.image_size == 32
    items, classnames, info = common.load_manifest(out / "data" / "synth_1")
    assert classnames == list(SHAPES) and info["templates"] == [toy_world.TEMPLATE] and len(items) == 40 * 8
    first = json.loads((out / "data" / "synth_1" / "manifest.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("a photo of a ") and SHAPES[first["label"]] in first["prompt"] and \
        "background" in first["prompt"], "each image's prompt is its full caption (distill.py --text caption)"
    run = out / "runs" / "marks" / "s1" / "contrastive_tau_0.01_caption" / "seed0"
    saved = json.loads((run / "args.json").read_text())
    assert (run / "student.pt").is_file() and (saved["loss"], saved["text"], saved["temperature"]) == \
        ("contrastive", "caption", 0.01)
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["distill_s"] > 0 and timing["evaluate_s"] > 0 and timing["caches_built"] == 2
    # a rerun reuses the teacher, the data and the runs, and measures the same
    before = {p: p.stat().st_mtime_ns for p in [out / "teacher" / "open_clip_pytorch_model.bin", run / "student.pt"]}
    again = toy.main(["--quick", "--out", str(out)])
    assert again["runs"] == result["runs"]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    # other settings never overwrite what is there
    kit.exits_with_one_line(toy.main, ["--quick", "--out", str(out), "--teacher-lr", "0.001"], capsys,
                            "made with other settings (teacher_lr)")
    assert json.loads((out / "results.json").read_text())["runs"] == result["runs"]
    # the views study: same teacher and unmarked set, crops on, fixed views against fresh ones
    views = toy.main(["--quick", "--study", "views", "--out", str(out)])
    assert [r["views"] for r in views["runs"]] == ["1", "fresh"]
    assert all(-1 <= r["cosine"] <= 1 for r in views["runs"])
    table = (out / "views_table.md").read_text()
    assert "| fresh (--no-cache) |" in table and "| 1 |" in table
    fresh = json.loads((out / "runs" / "views" / "views_fresh" / "seed0" / "args.json").read_text())
    assert fresh["cache"] is False and fresh["crop_scale"] == [0.08, 1.0]
    # the corruptions study: the same students (reused, not retrained) and the teacher on corrupted real images
    corrupted = toy.main(["--quick", "--study", "corruptions", "--out", str(out)])
    assert [r["real"] for r in corrupted["runs"]] == [r["real"] for r in result["runs"]]
    assert all(set(r["corrupted"]) == {"gaussian_noise 3", "defocus_blur 3"} for r in corrupted["runs"])
    assert (run / "toy_corruptions.json").is_file()
    table = (out / "corruptions_table.md").read_text()
    assert "4 of 4 runs reused" in table and "| - | teacher |" in table and "| defocus_blur |" in table
