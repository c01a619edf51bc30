"""The images zeroshot.py evaluates on: the six datasets' test splits through torchvision, synth.py folders and
class_name/*.jpg folders, each as a torch Dataset of (image tensor, label); undecodable images are skipped and
named, never fatal (`SkipBroken`, `collate_skipping`)."""
import warnings
from pathlib import Path

import torch
from PIL import Image

from helpers import common, domains
from helpers.common import UserError, require


def is_folder_dataset(dataset):
    """A folder path rather than one of domains.DATASETS."""
    return dataset not in domains.DATASETS


def check_folder(dataset):
    folder = Path(dataset)
    if not folder.exists():
        raise UserError(f"unknown dataset '{dataset}': use one of {', '.join(domains.DATASETS)} or an image folder")
    require(folder.is_dir(), f"{folder} is a file, not a dataset folder (class_name/*.jpg or a synth.py folder)")
    return folder



TORCHVISION = {  # our name -> (torchvision class, extra kwargs)
    "pets": ("OxfordIIITPet", {"target_types": "category"}),
    "flowers": ("Flowers102", {}),
    "cars": ("StanfordCars", {}),
    "food101": ("Food101", {}),
    "dtd": ("DTD", {}),
    "fgvc_aircraft": ("FGVCAircraft", {"annotation_level": "variant"}),
}
CARS_HELP = ("torchvision cannot download Stanford Cars (its URL is dead): get it from Kaggle "
             "(e.g. the 'stanford-cars-dataset' mirror) plus cars_test_annos_withlabels.mat, and lay it out as "
             "<data-root>/stanford_cars/{devkit/cars_meta.mat, cars_test/*.jpg, cars_test_annos_withlabels.mat}")


class FileList(torch.utils.data.Dataset):
    """(path, label) pairs read with PIL."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def image_paths(ds):
    """The file behind each index of a torchvision dataset or a FileList (for warnings)."""
    for attr in ("_images", "_image_files"):
        if hasattr(ds, attr):
            return [str(p) for p in getattr(ds, attr)]
    if hasattr(ds, "_samples"):
        return [str(p) for p, _ in ds._samples]
    if hasattr(ds, "samples"):
        return [str(p) for p, _ in ds.samples]
    return None


def build_dataset(dataset, data_root, split, transform, download=False, subset=None, fetch=None, class_index=None):
    """A torch Dataset of (image tensor, label) for a helpers/domains.py name or a folder. fetch: what the error
    line of a missing or incomplete torchvision dataset tells the user to do (default: zeroshot.py's flags);
    class_index: a class_name/*.jpg folder's {folder name: label} (default: the sorted folders' positions)."""
    if is_folder_dataset(dataset):
        folder = check_folder(dataset)
        if (folder / "manifest.jsonl").is_file():
            items, _, _ = common.load_manifest(folder)
            if subset is not None:
                keep = set(subset)
                items = [it for it in items if it[0] in keep]
            samples = [(str(folder / p), y) for p, y in items]
        else:
            classes = class_index or {c: y for y, c in enumerate(common.class_folders(folder))}
            samples = [(str(folder / c / p), y) for c, y in classes.items() for p in common.list_images(folder / c)]
        require(samples, f"{folder} holds no images (expected class_name/*.jpg folders or a synth.py manifest)")
        return FileList(samples, transform)
    import torchvision.datasets as tvd
    root = Path(data_root)
    require(root.is_dir() or download, f"data root {root} does not exist: "
                                       f"{fetch or 'pass --data-root DIR (or --download)'}")
    cls_name, kwargs = TORCHVISION[dataset]
    if dataset == "cars" and download:
        raise UserError(CARS_HELP)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = getattr(tvd, cls_name)(root=str(root), split=split, transform=transform, download=download, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        hint = CARS_HELP if dataset == "cars" else fetch or "pass --download to let torchvision fetch it"
        raise UserError(f"{dataset} ({cls_name}, split {split}) not found or incomplete under {root}: {hint} "
                        f"[{str(e).splitlines()[0][:120]}]") from None
    except ValueError as e:
        raise UserError(f"{dataset}: {e}") from None
    expected = len(domains.CLASSNAMES[dataset])
    found = len(getattr(ds, "classes", []))
    require(found in (0, expected), f"{dataset} under {root} has {found} classes, expected {expected}: "
                                    f"the files are incomplete or of another version")
    require(len(ds) > 0, f"{dataset} split {split} under {root} holds no images")
    return ds


def check_split(dataset, data_root, split="test"):
    """Before a distill.py run trains: the split it evaluates on at its end is there and complete (torchvision's
    own checks, the images are not decoded), or one line that says how to fetch it."""
    fetch = CARS_HELP if dataset == "cars" else (f"fetch it first with python zeroshot.py --dataset {dataset} "
                                                 f"--download --data-root {data_root}")
    try:
        build_dataset(dataset, data_root, split, transform=None, fetch=fetch)
    except UserError as e:
        raise UserError(f"--eval-root: {e}") from None


class SkipBroken(torch.utils.data.Dataset):
    """Wrap a dataset so an unreadable image yields None instead of killing the loader."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            image, label = self.ds[i]
            return image, int(label), i
        except common.UNDECODABLE as e:  # PIL: truncated, unidentified, bad header, a decompression bomb
            return None, -1, (i, common.first_line(e, 100))


def collate_skipping(batch):
    """Stack good samples; return the indices (and reasons) of the broken ones."""
    good = [b for b in batch if b[0] is not None]
    broken = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, None, broken
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good])
    return images, labels, broken
