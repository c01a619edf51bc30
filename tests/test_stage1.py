"""Stage 1: distill.py streams webdataset shards (jpg + txt + json) once, split across torchrun ranks
and loader workers; corrupt samples are skipped and counted; resume continues from the right step; a tiny
stage 1 -> stage 3 run works end to end."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import distill
from helpers import shards
import kit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_shards(folder, n_shards=4, per_shard=6, corrupt=(), seed=0):
    """img2dataset's layout: per sample KEY.jpg, KEY.txt (caption), KEY.json (metadata), in tar shards."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = []
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
                files = {"jpg": b"not a jpeg" if key in corrupt else buf.getvalue(),
                         "txt": f"a photo number {key}".encode(), "json": json.dumps({"key": key}).encode()}
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                keys.append(key)
    return folder, keys


def pattern(folder, n_shards=4):
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


def stream_keys(urls, rank, world, workers, passes=1, skip=None):
    stream = shards.ShardStream(urls, [32], (0.5,) * 3, (0.5,) * 3, seed=0, scale=(0.5, 1.0), rank=rank,
                                 world_size=world, skip=skip, passes=passes)
    loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=workers)
    keys, skipped = [], {}
    for crops, batch_keys, count in loader:
        assert crops[0].shape[1:] == (3, 32, 32)
        keys += list(batch_keys)
        skipped.update({g: c for g, c in count.tolist()})
    return keys, sum(skipped.values())


def test_two_ranks_two_workers_see_every_sample_once_per_pass(tmp_path):
    folder, keys = write_shards(tmp_path / "shards", n_shards=8, per_shard=3, corrupt={"000020001"})
    urls = shards.expand_shards(pattern(folder, 8))
    seen, bad = [], 0
    for rank in (0, 1):  # what each torchrun rank streams (rank and world size come from torchrun)
        k, b = stream_keys(urls, rank, world=2, workers=2)
        seen, bad = seen + k, bad + b
    good = [k for k in keys if k != "000020001"]
    assert sorted(seen) == sorted(good) and len(seen) == len(set(seen))  # each sample exactly once
    assert bad == 1
    # a second pass sees the same set again, shards in another order
    two, _ = stream_keys(urls, 0, world=1, workers=2, passes=2)
    assert sorted(two) == sorted(good + good) and two[:len(good)] != two[len(good):]


@pytest.mark.parametrize("case", ["no shard matches", "not a tar file", "contrastive on shards"])
def test_bad_shard_input(case, tmp_path, tiny_teacher, capsys):
    (tmp_path / "x.tar").write_bytes(b"this is no tar archive at all" * 40)
    folder, _ = write_shards(tmp_path / "ok", n_shards=1)
    data, extra, message = {
        "no shard matches": (str(tmp_path / "none-{0..3}.tar"), [], "matches no file"),
        "not a tar file": (str(tmp_path / "x.tar"), [], "is not a tar file"),
        "contrastive on shards": (str(folder / "00000.tar"), ["--loss", "contrastive"], "stage 1 uses the L2 loss"),
    }[case]
    kit.exits_with_one_line(distill.main, ["--data", data, "--teacher", tiny_teacher, "--steps", "2", "--out",
                                           str(tmp_path / "r"), *extra], capsys, message)
    assert not (tmp_path / "r").exists()


def stage1_args(data, teacher, out, steps, *extra):
    return ["--data", data, "--teacher", teacher, "--out", str(out), "--student", "test_vit", "--image-size", "32",
            "--batch-size", "4", "--steps", str(steps), "--workers", "2", "--device", "cpu", "--log-every", "1",
            "--save-every", "2", *extra]


def test_stage1_resume_and_stage3_from_it(tmp_path, tiny_teacher):
    folder, keys = write_shards(tmp_path / "shards", corrupt={"000010002"})
    data = pattern(folder)
    straight = distill.main(stage1_args(data, tiny_teacher, tmp_path / "straight", 6))
    stats = json.loads((straight / "stream.json").read_text())
    assert stats["samples"] == 24 and stats["shards"] == 4
    # resume: 3 steps, then on to 6, equals 6 straight (each worker fast-forwards past what it delivered)
    distill.main(stage1_args(data, tiny_teacher, tmp_path / "resumed", 3))
    distill.main(stage1_args(data, tiny_teacher, tmp_path / "resumed", 6, "--resume"))
    a = torch.load(straight / "student.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "student.pt", weights_only=False)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # stage 3 starts from the stage-1 student on a synth.py folder
    synth = kit.make_synth_folder(tmp_path / "synth", per_class=4, size=(40, 48))
    run = distill.main(["--data", str(synth), "--teacher", tiny_teacher, "--init", str(straight / "student.pt"),
                        "--out", str(tmp_path / "stage3"), "--student", "test_vit", "--image-size", "32",
                        "--batch-size", "4", "--steps", "3", "--views", "1", "--workers", "0", "--device", "cpu"])
    assert (run / "student.pt").is_file()
    assert json.loads((run / "args.json").read_text())["init"] == str((straight / "student.pt").resolve())


def test_torchrun_streams_shards(tmp_path, tiny_teacher):
    folder, _ = write_shards(tmp_path / "shards", corrupt={"000030001"})
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "distill.py", *stage1_args(pattern(folder), tiny_teacher, tmp_path / "ddp", 4)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((tmp_path / "ddp" / "stream.json").read_text())
    # 2 ranks x 2 workers, one shard each: 4 steps of 4 = 16 samples; the corrupt one was met and counted
    assert stats["samples"] == 16 and stats["skipped"] == 1
    assert (tmp_path / "ddp" / "student.pt").is_file()
