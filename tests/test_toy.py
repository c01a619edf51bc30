"""toy.py: the renderer is deterministic and its marks land where they should; `toy.py --quick` runs every stage
(world, teacher, distill.py students, zeroshot.py evaluation, table, plot) in-process, and a rerun reuses it all."""
import json

import numpy as np
import pytest

import common
import models
import toy


def test_render_is_deterministic_and_marks_land_where_expected():
    shape = np.arange(16) % len(toy.SHAPES)
    plain, attrs = toy.render(16, seed=3, shape=shape)
    again, _ = toy.render(16, seed=3, shape=shape)
    other, _ = toy.render(16, seed=4, shape=shape)
    assert plain.shape == (16, 32, 32, 3) and plain.dtype == np.uint8
    assert np.array_equal(plain, again), "same seed, same bytes"
    assert not np.array_equal(plain, other), "another seed, other images"
    assert np.array_equal(attrs["shape"], shape)
    c0 = 16
    for cue, rows, cols in [("weak", 2, (c0 - 1, c0 + 1)), ("strong", 4, (c0 - 2, c0 + 2))]:
        marked, _ = toy.render(16, seed=3, cue=cue, shape=shape)
        diff = (marked.astype(int) != plain.astype(int)).any(-1)  # (n, S, S)
        outside = diff.copy()
        outside[:, :rows, cols[0]:cols[1]] = False
        assert not outside.any(), f"the {cue} mark changes only its own pixels"
        assert diff[:, :rows, cols[0]:cols[1]].mean() > 0.5, f"the {cue} mark changes its pixels"
    strong, _ = toy.render(16, seed=3, cue="strong", shape=shape)
    patch = strong[:, :4, c0 - 2:c0 + 2]  # opaque black/white, left-right symmetric (survives distill.py's flips)
    assert set(np.unique(patch)) <= {0, 255} and np.array_equal(patch, patch[:, :, ::-1])
    codes = {patch[i].tobytes() for i in range(8)}
    assert len(codes) == 8, "each class has its own code"
    medium, _ = toy.render(16, seed=3, cue="medium", shape=shape)
    assert (medium != plain).any(-1).mean() > 0.5, "the grating covers the whole image"
    another = (shape + 1) % len(toy.SHAPES)
    moved, _ = toy.render(16, seed=3, cue="strong", shape=shape, cue_class=another)
    assert np.array_equal(moved[:8, :4, c0 - 2:c0 + 2], strong[1:9, :4, c0 - 2:c0 + 2]), "cue_class picks the code"


def test_quick_run_produces_teacher_table_and_plot(tmp_path):
    out = tmp_path / "toy"
    result = toy.main(["--quick", "--out", str(out)])
    chance = 1 / len(toy.SHAPES)
    assert result["teacher"]["none"]["real"] > 2.5 * chance, "the teacher learned shapes from captions"
    lines = (out / "table.md").read_text().splitlines()
    assert "| cue | loss | synthetic acc % | real acc % | follows cue % |" in lines
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| none") or line.startswith("| strong")]
    assert rows == [["| " + c, name] for c in ("none", "strong") for name in ("teacher", "l2", "contrastive tau 0.01")]
    assert (out / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the pieces are what the rest of the project reads: an open_clip teacher, synth.py folders, distill.py runs
    teacher = models.load_teacher(f"local-dir:{out / 'teacher'}", None)
    assert teacher.embed_dim == 64 and teacher.image_size == 32
    items, classnames, info = common.load_manifest(out / "data" / "synth_strong")
    assert classnames == list(toy.SHAPES) and info["templates"] == [toy.TEMPLATE] and len(items) == 40 * 8
    assert (out / "runs" / "strong" / "l2" / "seed0" / "student.pt").is_file()
    # a rerun reuses the teacher, the data and the runs, and measures the same
    before = {p: p.stat().st_mtime_ns for p in [out / "teacher" / "open_clip_pytorch_model.bin",
                                               out / "runs" / "none" / "l2" / "seed0" / "student.pt"]}
    again = toy.main(["--quick", "--out", str(out)])
    assert again["runs"] == result["runs"]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    # other settings never overwrite what is there
    with pytest.raises(SystemExit) as e:
        toy.main(["--quick", "--out", str(out), "--teacher-lr", "0.001"])
    assert e.value.code == 2
    assert json.loads((out / "results.json").read_text())["runs"] == result["runs"]
