"""The teacher cache: it holds the teacher's embedding of exactly the crop the student sees; another run reuses it
(and trains the same); a mismatching cache, a changed image set or another image of the same size rebuilds it;
another K is another file; a cache written by the older writer, which also kept text embeddings, still loads."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distill
import kit
from helpers import models, views
from test_distill import assert_same, run_args, weights


@pytest.fixture(scope="module")
def built(tiny_teacher, tmp_path_factory):
    """A synth folder whose cache a 3-step run built (K = 2), and that run."""
    tmp = tmp_path_factory.mktemp("cache")
    synth = kit.make_synth_folder(tmp / "synth", per_class=8)  # 3 classes x 8 images, 40x48 px
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "xdg"))  # the text classifiers stay in this module's folder
        distill.main(run_args(synth, tiny_teacher, tmp / "a", steps=3))
    [path] = (synth / "cache").glob("*.pt")
    return SimpleNamespace(synth=synth, run=tmp / "a", path=path)


def copy_of(built, tmp_path):
    """The built folder, cache included, as a copy this test may change."""
    shutil.copytree(built.synth, tmp_path / "synth")
    return tmp_path / "synth", tmp_path / "synth" / "cache" / built.path.name


def test_cache_holds_the_teachers_embedding_of_each_cached_view(built, tiny_teacher):
    cache = torch.load(built.path, weights_only=True)
    n = 24
    assert cache["emb"].shape == (n, 2, 32) and cache["emb"].dtype == torch.float16
    assert cache["meta"]["views"] == 2 and cache["meta"]["resolution"] == 64 and cache["meta"]["n"] == n
    assert "text" not in cache and "captions" not in cache  # image targets only: distill.py builds the text ones
    # boxes lie inside the 48x40 images and differ between views
    top, left, h, w = cache["boxes"].unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 48).all()
    assert not torch.equal(cache["boxes"][:, 0], cache["boxes"][:, 1])
    # exact: the teacher's embedding of the rebuilt crop equals the cached one (fp16 storage)
    teacher = models.load_teacher(tiny_teacher, None)
    images = views.load_images(built.synth)
    pairs = [(0, 0), (5, 1), (13, 0), (23, 1)]
    i, k = torch.tensor(pairs).unbind(-1)
    crops = views.render_views(images, i, cache["boxes"][i, k], cache["flips"][i, k], 64, teacher.mean, teacher.std,
                               torch.device("cpu"))  # what the student's loader renders for these views
    with torch.no_grad():
        fresh = teacher.model.encode_image(crops)
    cached = torch.stack([cache["emb"][i, k] for i, k in pairs]).float()
    torch.testing.assert_close(cached, fresh, rtol=2e-3, atol=2e-3 * fresh.abs().max().item())
    assert not torch.allclose(cached[0], cached[1])  # different views, different embeddings


def test_another_run_reuses_the_cache_and_trains_like_the_run_that_built_it(built, tiny_teacher, tmp_path,
                                                                            monkeypatch, capsys):
    mtime = built.path.stat().st_mtime_ns
    monkeypatch.setattr(views, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    distill.main(run_args(built.synth, tiny_teacher, tmp_path / "b", "--workers", "2", steps=3))  # any worker count
    assert "reusing" in capsys.readouterr().out and built.path.stat().st_mtime_ns == mtime
    assert_same(weights(built.run / "student.pt"), weights(tmp_path / "b" / "student.pt"))
    rng_a, rng_b = (torch.load(r / "last.pt", weights_only=False)["rng"]["torch"] for r in (built.run, tmp_path / "b"))
    assert torch.equal(rng_a, rng_b)  # building the cache drew nothing from the training run's random streams


def test_a_contrastive_run_reuses_the_cache_without_writing_it(built, tiny_teacher, tmp_path, monkeypatch):
    mtime = built.path.stat().st_mtime_ns
    monkeypatch.setattr(views, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    distill.main(run_args(built.synth, tiny_teacher, tmp_path / "c", "--loss", "contrastive", steps=1))
    assert built.path.stat().st_mtime_ns == mtime  # its captions' embeddings are not kept in the cache


def test_a_cache_whose_metadata_does_not_match_is_rebuilt(built, tiny_teacher, tmp_path, capsys):
    synth, path = copy_of(built, tmp_path)
    cache = torch.load(path, weights_only=True)
    torch.save(dict(cache, meta=dict(cache["meta"], seed=123)), path)
    distill.main(run_args(synth, tiny_teacher, tmp_path / "d", steps=1))
    assert "built" in capsys.readouterr().out and torch.load(path, weights_only=True)["meta"]["seed"] == 0


def test_a_changed_image_set_rebuilds_the_cache(built, tiny_teacher, tmp_path):
    synth, path = copy_of(built, tmp_path)
    kit.random_image(np.random.default_rng(1)).save(synth / "images" / "000" / "00099.png")
    with open(synth / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"path": "images/000/00099.png", "label": 0, "classname": "circle"}) + "\n")
    distill.main(run_args(synth, tiny_teacher, tmp_path / "e", steps=1))
    assert torch.load(path, weights_only=True)["emb"].shape[0] == 25


def test_another_k_is_another_cache_file(built, tiny_teacher, tmp_path):
    synth, _ = copy_of(built, tmp_path)
    distill.main(run_args(synth, tiny_teacher, tmp_path / "f", "--views", "3", steps=1))
    # the first one stays for the runs that use it
    assert sorted(int(p.name.split("-K")[1][0]) for p in (synth / "cache").glob("*.pt")) == [2, 3]


def test_a_cache_written_with_text_embeddings_by_the_older_writer_still_loads(built, tiny_teacher, tmp_path,
                                                                              monkeypatch, capsys):
    synth, path = copy_of(built, tmp_path)
    new = torch.load(path, weights_only=True)
    # what the older writer stored: the same keys, plus the class-prompt and caption embeddings
    old = {"meta": new["meta"], "paths": new["paths"], "boxes": new["boxes"], "flips": new["flips"],
           "emb": new["emb"], "text": {"0123abcd": {"classnames": ["circle", "square", "triangle"],
                                                    "templates": ["a photo of a {c}."], "emb": torch.randn(3, 32)}},
           "captions": {"key": "4567ef01", "emb": torch.randn(24, 32).half()}, "skipped": new["skipped"]}
    torch.save(old, path)
    monkeypatch.setattr(views, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    distill.main(run_args(synth, tiny_teacher, tmp_path / "old", steps=3))
    assert "teacher cache: reusing" in capsys.readouterr().out
    assert_same(weights(built.run / "student.pt"), weights(tmp_path / "old" / "student.pt"))


def test_an_image_replaced_by_one_of_the_same_size_rebuilds_the_teacher_cache(tiny_teacher, tmp_path, capsys):
    folder = tmp_path / "bmp"  # uncompressed: any image of the same shape has the same file size
    rng = np.random.default_rng(0)
    (folder / "x").mkdir(parents=True)
    for i in range(12):
        kit.random_image(rng).save(folder / "x" / f"{i:02d}.bmp")
    distill.main(run_args(folder, tiny_teacher, tmp_path / "a", steps=1))
    size = (folder / "x" / "03.bmp").stat().st_size
    kit.random_image(rng).save(folder / "x" / "03.bmp")
    assert (folder / "x" / "03.bmp").stat().st_size == size
    capsys.readouterr()
    distill.main(run_args(folder, tiny_teacher, tmp_path / "b", steps=1))
    assert "teacher cache: built" in capsys.readouterr().out
