"""synth.py's output folder: <out>/<dataset>/images/<class:03d>/<n:05d>.<ext>, manifest.jsonl, synth.json.

Images are written to a temp file and renamed, so a file under its final name is complete: a rerun scans the
folder (`scan_images`) and makes only what is missing. `check_folder` refuses a folder that holds another run;
`write_manifest` rewrites the manifest from the files on disk under a lock (shards may finish at once); `Writer`
saves images on threads while the accelerator makes the next batch.
"""
import contextlib
import json
import os
import queue
import threading

import numpy as np
from PIL import Image

from helpers import common
from helpers.common import require

try:
    import fcntl  # serialises the manifest rewrite of concurrent shard jobs (POSIX)
except ImportError:  # pragma: no cover
    fcntl = None

# synth.json keys that decide the pixels or the prompts: a folder whose values differ holds a different run.
IDENTITY = ("dataset", "classnames", "generator", "generator_source", "steps", "guidance", "size", "prompts",
            "seed", "template", "vocabulary", "format", "save_size", "domain")


def check_folder(folder, info, skip=()):
    """Refuse a folder that holds a different run; return the per-class count to record (extensions grow it)."""
    path = folder / "synth.json"
    if not path.is_file():
        require(not (folder / "images").exists() and not (folder / "manifest.jsonl").exists(),
                f"{folder} holds images but no synth.json, so not a synth.py run; use another --out")
        return info["per_class"]
    old = common.read_json(path, "synth.json", keys=("per_class",))
    require(isinstance(old["per_class"], int), f"{path}: per_class is not a whole number; it was edited: restore it "
                                               f"(the images per class of that run) or use another --out")
    before, now = old.get("generator_source"), info["generator_source"]
    if isinstance(before, dict) and "lora_file" in now and "lora_file" not in before:  # made before it was named
        before["lora_file"] = now["lora_file"]
    diff = [f"{k}: {old.get(k)!r:.60} vs {info[k]!r:.60}" for k in IDENTITY
            if k not in skip and old.get(k) != info[k]]
    require(not diff, f"{folder} holds a different run ({'; '.join(diff)}); use another --out or delete it")
    require(info["per_class"] >= old["per_class"], f"{folder} holds {old['per_class']} images per class; pass "
                                                   f"--per-class {old['per_class']} or more, or another --out")
    return info["per_class"]


def scan_images(folder, num_classes, per_class, ext):
    """{(c, n)} of finished images on disk. Files appear by rename, so a file with a final name is complete."""
    done = set()
    for c in range(num_classes):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder / "images" / f"{c:03d}"):
                stem, dot, suffix = entry.name.partition(".")
                if suffix == ext and stem.isdigit() and int(stem) < per_class:
                    done.add((c, int(stem)))
    return done


def write_manifest(folder, done, record):
    """Rewrite manifest.jsonl from the files on disk (sorted by class, image), atomically and under a lock."""
    with open(folder / ".lock", "w") as lock:
        if fcntl:
            fcntl.flock(lock, fcntl.LOCK_EX)
        done = done()  # scan inside the lock: the last writer sees every finished file
        with common.atomic_write(folder / "manifest.jsonl", "w") as f:
            f.writelines(json.dumps(record(c, n)) + "\n" for c, n in sorted(done))
    return len(done)


def save_image(array, path, fmt, save_size):
    """(H, W, 3) float in [0, 1] -> image file, written to a temp file and renamed (never half-written)."""
    image = Image.fromarray((array * 255).round().astype(np.uint8))  # diffusers' own numpy_to_pil rounding
    if save_size and min(image.size) != save_size:
        w, h = image.size
        image = image.resize((round(w * save_size / min(w, h)), round(h * save_size / min(w, h))), Image.LANCZOS)
    # temp file + fsync + rename: a kill, even a power cut, leaves only complete files under the final names, which
    # is what makes "a file that exists is finished" safe on resume. The fsync waits on the disk, not the GIL.
    with common.atomic_write(path) as f:
        image.save(f, format="PNG" if fmt == "png" else "JPEG", **({"quality": 95} if fmt == "jpg" else {}))


class Writer:
    """Threads that save images (PNG/JPEG encoding releases the GIL) while the accelerator makes the next batch.
    Each image is renamed into place first, then (single writer only) its manifest line is appended with one
    O_APPEND write, so the manifest never names a missing file. The first error is re-raised by put()/check()."""

    def __init__(self, folder, threads, fmt, save_size, manifest_fd=None, max_queued=16):
        self.folder, self.fmt, self.save_size, self.fd = folder, fmt, save_size, manifest_fd
        # a bounded queue: if saving falls behind, generation waits instead of piling images up in memory
        self.queue, self.lock, self.error = queue.Queue(maxsize=max_queued), threading.Lock(), None
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after a failure, only drain the queue so put() never blocks
                try:
                    array, rec = item
                    save_image(array, self.folder / rec["path"], self.fmt, self.save_size)
                    if self.fd is not None:
                        with self.lock:
                            os.write(self.fd, (json.dumps(rec) + "\n").encode())
                except BaseException as e:
                    self.error = e

    def put(self, array, rec):
        self.check()
        self.queue.put((array, rec))

    def check(self):
        if self.error is not None:
            raise self.error

    def close(self):
        """Finish the queued images (they are complete) and stop the threads."""
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
