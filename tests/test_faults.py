"""Fault injection: a model folder without its weights, two writers on one run folder, a kill -9, a full disk, a
decompression bomb, a damaged last.pt, bad flags of every script. Each is refused with one line before anything is
written, or skipped and named; a resumed run's log equals an uninterrupted one."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import bench
import distill
import export
import kit
import synth
import toy
from helpers import common, eval_data, models, run_lock, views
from test_distill import log_steps, run_args
from test_export import make_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    return kit.make_synth_folder(tmp_path / "synth", per_class=8)  # 3 classes x 8 images, 40x48 px


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# a model folder loads whole or not at all

def test_open_clip_folder_without_weights_or_with_other_weights_is_one_line(tiny_teacher, data, tmp_path, capsys):
    teacher_dir = Path(tiny_teacher[len("local-dir:"):])
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(teacher_dir / "open_clip_config.json", bare)
    kit.exits_with_one_line(distill.main, run_args(data, f"local-dir:{bare}", tmp_path / "run"), capsys,
                            "no weights file")
    assert not (tmp_path / "run").exists() and not (data / "cache").exists()  # refused before the image store
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((teacher_dir / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 16
    (other / "open_clip_config.json").write_text(json.dumps(config))
    shutil.copy(teacher_dir / "open_clip_pytorch_model.bin", other)
    with pytest.raises(common.UserError, match="do not fit the model's config: size mismatch for text_projection"):
        models.load_teacher(f"local-dir:{other}", None)


# ----------------------------------------------------------------------------------------------
# one writer per run folder

def test_a_second_writer_is_refused_naming_the_first(tiny_teacher, data, tmp_path, capsys):
    run = tmp_path / "run"
    distill.main(run_args(data, tiny_teacher, run, steps=3))
    assert not (run / run_lock.LOCK_NAME).exists()  # released with the run
    before = snapshot(run)
    holder = run_lock.lock_run_folder(run)  # another writer (a separate open file: flock conflicts as across processes)
    try:
        line = kit.exits_with_one_line(distill.main, run_args(data, tiny_teacher, run, "--resume", steps=6), capsys,
                                       "is being written by another process")
        assert f"pid {os.getpid()}:" in line
        kit.exits_with_one_line(export.main, [str(run), "--overwrite"], capsys, "is being written by another process")
    finally:
        holder.release()
    assert snapshot(run) == before


def test_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from helpers import run_lock; "
            "run_lock.lock_run_folder(sys.argv[2]); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(common.UserError, match=f"pid {holder.pid}: "):
            run_lock.lock_run_folder(run)
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    assert (run / run_lock.LOCK_NAME).exists()  # its file stays, its lock went with the process
    run_lock.lock_run_folder(run).release()
    assert not (run / run_lock.LOCK_NAME).exists()


# ----------------------------------------------------------------------------------------------
# every check before the slow work; nothing written by a refused run

@pytest.mark.parametrize("extra, expect", [
    (["--student", "no_such_net"], "unknown timm model"),
    (["--image-size", "-1"], "--image-size must be >= 16"),
])
def test_refused_before_the_image_store(extra, expect, tiny_teacher, data, tmp_path, capsys):
    kit.exits_with_one_line(distill.main, run_args(data, tiny_teacher, tmp_path / "run", *extra), capsys, expect)
    assert not (tmp_path / "run").exists() and not (data / "cache").exists()


def test_no_room_for_the_image_store_is_refused_before_writing(tiny_teacher, data, tmp_path, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(views.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    kit.exits_with_one_line(distill.main, run_args(data, tiny_teacher, tmp_path / "run"), capsys,
                            "the image store of 24 images at 48 x 48 px needs")
    assert not (tmp_path / "run").exists() and not list((data / "cache").glob("images-*"))


def test_a_full_disk_is_an_os_error_when_the_store_is_reserved_not_a_sigbus(small_tmpfs):
    with pytest.raises(OSError) as e:
        views.reserve(small_tmpfs / "store.u8", 8 * 2**20)  # 8 MiB on 1 MiB: refused at once, named
    assert e.value.errno == 28 and str(small_tmpfs) in e.value.filename


def test_a_full_disk_during_the_open_clip_export_is_one_line(tiny_teacher, small_tmpfs, tmp_path, capsys):
    make_run(tmp_path, models.load_teacher(tiny_teacher, None), "test_efficientnet", 64)
    (small_tmpfs / "filler").write_bytes(bytes(1000 * 1024))  # leaves less than the text tower's weights
    kit.exits_with_one_line(export.main, [str(tmp_path / "student.pt"), "--out", str(small_tmpfs / "oc")], capsys,
                            "No space left on device (" + str(small_tmpfs / "oc") + "): free some space")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


# ----------------------------------------------------------------------------------------------
# decompression bombs and damaged files

def bomb_png(path, side=30000):
    """A 1 x 1 PNG whose header claims side x side pixels: PIL refuses it on open."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_skipped_and_named(data, tmp_path):
    bomb = data / "images" / "001" / "00002.png"
    bomb_png(bomb)
    with pytest.raises(common.UserError, match="images/001/00002.png .*decompression bomb"):
        views.load_images(data)  # 1 of 24 is above the 1% a folder may lose: named, not a traceback
    ds = eval_data.SkipBroken(eval_data.FileList([(str(bomb), 0)], lambda im: im))
    image, label, (index, reason) = ds[0]
    assert image is None and "decompression bomb" in reason


@pytest.mark.parametrize("content, expect", [([1, 2], "lacks state_dict"), ({"model": {}}, "lacks optimizer")])
def test_a_damaged_last_pt_is_one_line(content, expect, tiny_teacher, data, tmp_path, capsys):
    run = tmp_path / "run"
    distill.main(run_args(data, tiny_teacher, run, steps=3))
    torch.save(content, run / "last.pt")
    kit.exits_with_one_line(distill.main, run_args(data, tiny_teacher, run, "--resume", steps=6), capsys, expect)


# ----------------------------------------------------------------------------------------------
# resume: exact in the weights and in log.jsonl; stale temp files removed

def test_resume_gives_the_uninterrupted_log_and_removes_stale_temps(tiny_teacher, data, tmp_path, monkeypatch):
    flags = ["--log-every", "2", "--save-every", "3"]  # the last checkpoint (3) falls between two log lines
    distill.main(run_args(data, tiny_teacher, tmp_path / "straight", *flags, steps=6))
    monkeypatch.setitem(distill.LOSSES, "l2", kit.interrupted_at(5, distill.LOSSES["l2"]))
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        distill.main(run_args(data, tiny_teacher, run, *flags, steps=6))
    monkeypatch.undo()
    for stale in (".last.pt.x1.tmp", ".student.pt.x2.tmp"):
        (run / stale).write_bytes(b"half a file")
    (run / ".open_clip.x3.tmp").mkdir()
    distill.main(run_args(data, tiny_teacher, run, *flags, "--resume", steps=6))
    fields = ("step", "epoch", "loss", "lr")
    assert [[r[k] for k in fields] for r in log_steps(run)] == \
        [[r[k] for k in fields] for r in log_steps(tmp_path / "straight")]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------
# bad flags of the other scripts: one line, nothing written

@pytest.mark.parametrize("main, argv, expect", [
    (bench.main, ["models", "--runs", "0"], "--runs must be > 0"),
    (bench.main, ["models", "--image-size", "0"], "--image-size must be > 0"),
    (bench.main, ["models", "--teacher", "NoSuchCLIP"], "unknown open_clip model"),
    (bench.main, ["train", "--workers", "-1"], "--workers must be >= 0"),
    (toy.main, ["--teacher-batch-size", "0"], "--teacher-batch-size must be > 0"),
    (toy.main, ["--teacher-lr", "nan"], "--teacher-lr must be a number"),
    (synth.main, ["--dataset", "pets", "--guidance", "nan", "--dry-run"], "--guidance must be a number"),
    (distill.main, ["--loss", "nope"], "invalid choice"),
])
def test_bad_flags_are_one_line(main, argv, expect, tmp_path, capsys):
    kit.exits_with_one_line(main, argv + (["--out", str(tmp_path / "out")] if main is toy.main else []), capsys,
                            expect)
    assert not (tmp_path / "out").exists()
