"""Stage 1 data for distill.py: webdataset shards (img2dataset's output for CC3M, CC12M, DataComp), streamed once.

Stage 1 distils the student on generic real images with the teacher online (one pass gains nothing from a cache).
The shards are dealt to torchrun ranks and loader workers; every sample is seen once per pass, undecodable ones are
skipped and counted, and a resumed run fast-forwards each worker past what its batches already used.
"""
import io
import os
import subprocess
import tarfile
from pathlib import Path

import torch
from PIL import Image

from helpers import common
from helpers.common import require
from helpers.views import ImageSet, draw_views, make_crop, seeded_generator


def is_shards(data):
    """--data names tar shards (a brace pattern, a .tar path, or a pipe: URL) rather than a folder."""
    return data.startswith("pipe:") or ".tar" in data or "{" in data


def expand_shards(pattern):
    """'shards/{00000..00099}.tar' -> the list of shard URLs; local files must exist and be tar files."""
    from braceexpand import braceexpand
    urls = [u for part in pattern.split("::") for u in braceexpand(part)]  # "a.tar::b/{0..9}.tar" too
    local = [u for u in urls if not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    require(not missing or len(missing) < len(local),
            f"shard pattern {pattern} matches no file (first: {urls[0]})")
    require(not missing, f"{len(missing)} of {len(urls)} shards of {pattern} do not exist "
                         f"(first: {(missing or [''])[0]})")
    for u in local:
        require(tarfile.is_tarfile(u), f"shard {u} is not a tar file (webdataset shards are tar archives)")
    return urls


def load_shards(pattern):
    """An ImageSet standing for a shard stream: paths are the shard URLs, no labels, no sizes."""
    urls = expand_shards(pattern)
    first = urls[0] if not urls[0].startswith("pipe:") else "pipe"
    root = Path(os.path.dirname(first) or ".").resolve()
    return ImageSet(root, urls, None, None, None, torch.zeros(0, 2), common.fingerprint(urls))


def open_shard(url):
    """A file object streaming one shard: a local path, or 'pipe:CMD' (e.g. pipe:curl -s URL)."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
        return proc.stdout
    return open(url, "rb")


def iterate_shard(url):
    """(key, {extension: bytes}) per sample: webdataset groups consecutive members by the key before the first dot."""
    key, sample = None, {}
    with open_shard(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            k, _, ext = base.partition(".")
            k = os.path.join(os.path.dirname(member.name), k)
            if k != key and sample:
                yield key, sample
                sample = {}
            key = k
            sample[ext.lower()] = tar.extractfile(member).read()
    if sample:
        yield key, sample


class ShardStream(torch.utils.data.IterableDataset):
    """Every sample of the shards exactly once per pass, split across torchrun ranks and loader workers.

    Shards are dealt round-robin to the global worker ids rank * workers + worker, in an order shuffled per pass
    from the seed (the same on every rank). Each worker streams its shards and yields ([crop at each of `resolutions`],
    key, (global worker id, samples it skipped so far)); a sample whose image does not decode is skipped and
    counted. The crop of a sample is seeded by (seed, key, pass), so it does not depend on rank or worker. After a
    pass a worker starts the next one, so a step-based run never runs dry; `skip` (worker -> samples) fast-forwards
    a resumed run past what its batches already consumed, and `first_worker` makes the loader's worker 0 play the
    worker whose batch comes next (a DataLoader always starts at its worker 0). `passes` limits the stream.
    """

    def __init__(self, urls, resolutions, mean, std, seed, scale, rank=0, world_size=1, skip=None, first_worker=0,
                 passes=None):
        self.urls, self.resolutions, self.mean, self.std = urls, resolutions, mean, std
        self.seed, self.scale = seed, scale
        self.rank, self.world_size, self.skip, self.passes = rank, world_size, skip or {}, passes
        self.first_worker = first_worker

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (worker + self.first_worker) % workers
        gid, total = self.rank * workers + worker, self.world_size * workers
        skip, skipped, epoch = self.skip.get(worker, 0), 0, 0
        while self.passes is None or epoch < self.passes:
            order = torch.randperm(len(self.urls), generator=seeded_generator("shards", self.seed, epoch)).tolist()
            mine = [self.urls[i] for i in order][gid::total]
            if not mine:
                raise RuntimeError(f"no shard for loader worker {gid} of {total}: use at least as many shards as "
                                   f"ranks x --workers")
            for url in mine:
                for key, sample in iterate_shard(url):
                    raw = next((sample[e] for e in ("jpg", "jpeg", "png", "webp") if e in sample), None)
                    try:
                        with Image.open(io.BytesIO(raw)) as im:
                            image = im.convert("RGB")
                    except Exception:  # no image, truncated, not an image: skip it, count it
                        skipped += 1
                        continue
                    if skip > 0:
                        skip -= 1
                        continue
                    gen = seeded_generator("stream", self.seed, key, epoch)  # the crop depends on the sample only
                    box, flip = draw_views(torch.tensor([image.size]), 1, gen, self.scale)
                    crops = [make_crop(image, box[0, 0].tolist(), bool(flip[0, 0]), s, self.mean, self.std)
                             for s in self.resolutions]
                    yield crops, key, torch.tensor([gid, skipped])
            epoch += 1


class ShardBatches:
    """The batches (crops, sample keys, None) of steps start..total-1 of this rank: a cached run's (crops, image
    index, view index), with no view to name. Batch b comes from loader worker b % workers (a DataLoader takes its
    workers in turn), so a resumed run fast-forwards each worker past the samples of the batches it already
    delivered. It counts the undecodable samples its workers skip (`count_skipped`: all ranks, at the end)."""

    def __init__(self, urls, resolutions, teacher, args, dist, start, total, pin_memory):
        local, workers = args.batch_size // dist.world_size, max(1, args.workers)
        stream = ShardStream(urls, resolutions, teacher.mean, teacher.std, args.seed, args.crop_scale, dist.rank,
                             dist.world_size, skip={w: len(range(w, start, workers)) * local for w in range(workers)},
                             first_worker=start % workers)
        self.loader = torch.utils.data.DataLoader(stream, batch_size=local, num_workers=args.workers,
                                                  pin_memory=pin_memory,
                                                  generator=seeded_generator("loader", args.seed))
        self.start, self.total, self.dist = start, total, dist
        self.skipped = {}  # global loader worker id -> undecodable samples it skipped so far

    def __iter__(self):
        for _, (crops, keys, counts) in zip(range(self.start, self.total), self.loader):  # the remaining steps
            self.skipped.update({w: max(c, self.skipped.get(w, 0)) for w, c in counts.tolist()})  # (b, 2) pairs
            yield crops, keys, None

    def count_skipped(self, device):
        """Undecodable samples skipped by all workers of all ranks."""
        bad = torch.tensor([sum(self.skipped.values())], device=device)  # on the device: NCCL reduces GPU tensors
        if self.dist.enabled:
            torch.distributed.all_reduce(bad)
        return int(bad)
