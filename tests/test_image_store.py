"""The image store (every training image decoded once, reused, rebuilt when an image changes) and the crops rendered
from it on the device, against torchvision's crop of the file."""
import numpy as np
import pytest
import torch

import kit
from helpers import views


@pytest.fixture
def synth(tmp_path):
    return kit.make_synth_folder(tmp_path / "synth", per_class=8)  # 3 classes x 8 images, 40x48 px


def test_store_is_reused_and_rebuilt_when_an_image_changes(synth):
    images = views.load_images(synth, store_size=32)
    [store] = (synth / "cache").glob("images-*.u8")
    assert images.store.shape == (24, 32, 32, 3) and images.store.dtype == "uint8"  # 40x48 images at R = 32
    mtime = store.stat().st_mtime_ns
    assert views.load_images(synth, store_size=32).digest == images.digest and store.stat().st_mtime_ns == mtime
    kit.random_image(np.random.default_rng(7)).save(synth / "images" / "001" / "00002.png")
    again = views.load_images(synth, store_size=32)
    [new_store] = (synth / "cache").glob("images-*.u8")  # the old store was removed
    assert new_store != store and again.digest != images.digest
    row = again.store_rows[again.paths.index("images/001/00002.png")]
    with views.Image.open(synth / "images" / "001" / "00002.png") as im:
        expected = np.asarray(im.convert("RGB").resize((32, 32), views.Image.BILINEAR))
    assert (again.store[row] == expected).all()
    assert views.load_images(synth).store.shape == (24, 48, 48, 3)  # R is at most the largest image side


def test_render_views_is_exact_for_a_whole_image_and_close_to_pil_for_crops(synth):
    images = views.load_images(synth)  # R = 48: 40x48 images stored at 48x48
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    idx = torch.tensor([3])
    whole = views.render_views(images, idx, torch.tensor([[0, 0, 40, 48]]), torch.tensor([False]), 48, mean, std,
                               torch.device("cpu"))
    stored = torch.from_numpy(images.store[int(images.store_rows[3])].copy()).permute(2, 0, 1) / 255
    torch.testing.assert_close(whole[0], (stored - 0.5) / 0.25)  # the whole image at its own size: a copy
    flipped = views.render_views(images, idx, torch.tensor([[0, 0, 40, 48]]), torch.tensor([True]), 48, mean, std,
                                 torch.device("cpu"))
    torch.testing.assert_close(flipped[0], whole[0].flip(-1))
    # a crop, from the store, against torchvision's bilinear crop of the file: the same pixels up to resampling
    box = [6, 10, 24, 30]
    ours = views.render_views(images, idx, torch.tensor([box]), torch.tensor([False]), 16, mean, std,
                              torch.device("cpu"))[0]
    with views.Image.open(synth / images.paths[3]) as im:
        pil = views.make_crop(im.convert("RGB"), box, False, 16, mean, std)
        shifted = views.make_crop(im.convert("RGB"), [8, 12, 24, 30], False, 16, mean, std)
    grey_levels = (ours - pil).abs().mean() * 0.25 * 255  # mean difference in 0..255 units: 2.2 measured
    assert grey_levels < 3 and (shifted - pil).abs().mean() * 0.25 * 255 > 3 * grey_levels  # a 2 px shift: 17
