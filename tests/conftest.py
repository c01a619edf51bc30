"""Shared fixtures: offline hub, a private cache folder, the tiny teacher, the default teacher from a fake hub
cache, fake datasets and a read-only mount."""
import copy
import os
import subprocess
import sys
from pathlib import Path

# Before anything imports huggingface_hub: never touch the network (each miss stalls 25-47 s).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

import kit  # noqa: E402

# Tiny models run fastest on one thread, and stay fast when other processes share the cores (several
# OpenMP threads fighting for busy cores slow a small conv or matmul down by 10x and more). One thread also
# keeps low-order bits identical between in-process runs and torchrun workers, which use one thread each.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Restore one thread after a test (or a script's main) changed it."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own XDG cache and in-process cache of text classifiers, so tests never share state
    by accident (nor skip the code that builds and writes them)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    if "zeroshot" in sys.modules:
        monkeypatch.setattr(sys.modules["zeroshot"], "_CLASSIFIERS", {})


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """'local-dir:<path>' of a random tiny open_clip model (64 px, embed_dim 32)."""
    return kit.make_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random diffusers pipeline folder (tests/kit_diffusers.py), built once for every test module."""
    import kit_diffusers
    return kit_diffusers.make_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory):
    """A data root holding fake test splits of all six torchvision datasets; labels in .labels."""
    root = tmp_path_factory.mktemp("data")
    labels = {name: kit.make_fake_dataset(name, root, seed=i) for i, name in enumerate(kit.domains.DATASETS)}
    return root, labels


@pytest.fixture(autouse=True)
def _flowers_without_md5(monkeypatch):
    """Flowers102 checks the md5 of its real .mat files; the fake ones only need to exist (tests only)."""
    from torchvision.datasets import Flowers102

    def exists_only(self):
        return self._images_folder.is_dir() and all(
            (self._base_folder / self._file_dict[k][0]).is_file() for k in ("label", "setid"))
    monkeypatch.setattr(Flowers102, "_check_integrity", exists_only)


@pytest.fixture
def fake_hub(tiny_teacher, tmp_path, monkeypatch):
    """The default teacher (ViT-B-32 + datacomp_xl_s13b_b90k) as open_clip finds it offline, for this test only:
    the tiny CLIP's weights in a private Hugging Face cache under the real repo and file name, and open_clip's
    ViT-B-32 architecture config swapped for the tiny one in this process. Returns the cache folder."""
    import huggingface_hub.constants as hc
    import open_clip.factory
    import zeroshot
    cache = tmp_path / "hf_hub"
    kit.add_teacher_to_hub_cache(cache, tiny_teacher, *kit.DEFAULT_TEACHER)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))  # huggingface_hub reads the variable once, at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    # open_clip.factory keeps its built-in architecture configs in _MODEL_CONFIGS (name -> model_cfg)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, kit.DEFAULT_TEACHER[0],
                        copy.deepcopy(kit.TINY_TEACHER_CFG["model_cfg"]))
    monkeypatch.setattr(zeroshot, "_CLASSIFIERS", {})  # text classifiers of the fake ViT-B-32 stay in this test
    return cache


def mount_tmpfs(folder, options):
    """Mount a tmpfs at `folder` (created) with these mount options; skips where mounting is not permitted (not
    root, a container without CAP_SYS_ADMIN). Yields the folder, unmounts after."""
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


@pytest.fixture
def ro_mount(tmp_path):
    """A real read-only tmpfs mounted at tmp_path/ro."""
    yield from mount_tmpfs(tmp_path / "ro", "ro,size=1m")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs at tmp_path/full: a disk that fills up."""
    yield from mount_tmpfs(tmp_path / "full", "size=1m")
