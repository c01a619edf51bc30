"""A tiny Stable Diffusion pipeline, LoRA and hub cache for offline tests: random weights, real classes and formats.

  make_tiny_pipeline(dir)   StableDiffusionPipeline (UNet block_out_channels (32, 64), a 4-block VAE of
                            8 channels, a 2-layer CLIPTextModel of width 32, CLIPTokenizer from open_clip's
                            bundled BPE file, LCMScheduler) saved with save_pretrained; synth.py loads it with
                            `--generator DIR`, through the same AutoPipelineForText2Image path as the hub ids.
  make_tiny_lora(dir, pipe) a random LoRA for it in the LCM-LoRA's file name and key format
  make_fake_hub_cache(dir)  both laid out as a Hugging Face hub cache under the real repo ids of synth.py's
                            default preset (Lykon/dreamshaper-7 + latent-consistency/lcm-lora-sdv1-5)

From the command line: `python tests/kit_diffusers.py DIR` saves the pipeline to DIR.
Its native size is 64 px (UNet sample_size 8 x VAE factor 8). One 64 px image takes a few ms per step on a CPU.
"""
import gzip
import json
import sys
from pathlib import Path

import torch

# The modules the LCM-LoRA training script targets (diffusers' train_lcm_distill_lora_sd_wds.py)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def clip_tokenizer():
    """transformers' CLIPTokenizer with the real CLIP vocabulary (49408 tokens), built offline.

    The vocabulary comes from open_clip's bundled BPE merges, in the order open_clip (and OpenAI) build it.
    The keyword form vocab_file=/merges_file= is silently ignored in transformers 5, so pass dict + list.
    """
    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer
    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_chars = list(oct.bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # ids 49406, 49407, as in openai/clip-vit-large-patch14
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def make_tiny_pipeline(folder, seed=0, scheduler_cls=None):
    """Build, save and return the path of a random-weight StableDiffusionPipeline (64 px native)."""
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    scheduler_cls = scheduler_cls or LCMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(  # 4 blocks: the real SD downsampling factor of 8
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = scheduler_cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def make_tiny_lora(folder, pipeline_dir, seed=0, rank=4, alpha=8.0):
    """A random LoRA for the tiny UNet in the format of latent-consistency/lcm-lora-sdv1-5's
    pytorch_lora_weights.safetensors: kohya-style keys over diffusers' module names, float16, e.g.
      lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight  (rank, in[, kh, kw])
      lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight    (out, rank[, 1, 1])
      lora_unet_down_blocks_1_attentions_0_proj_in.alpha             ()  -> delta W = alpha / rank * up @ down
    (what the LCM authors' save function, get_module_kohya_state_dict, writes). Both factors are random, so the
    LoRA changes the output. Returns the folder."""
    import safetensors.torch
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_dir) / "unet")
    gen, layers = torch.Generator().manual_seed(seed), {}
    for name, module in unet.named_modules():
        if not name.endswith(LORA_TARGETS) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        else:
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        key = "lora_unet_" + name.replace(".", "_")
        layers[key + ".lora_down.weight"] = (0.5 * torch.randn(down, generator=gen)).half()
        layers[key + ".lora_up.weight"] = (0.5 * torch.randn(up, generator=gen)).half()
        layers[key + ".alpha"] = torch.tensor(alpha).half()
    Path(folder).mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(layers, Path(folder) / "pytorch_lora_weights.safetensors")
    return Path(folder)


def make_fake_hub_cache(cache, seed=0):
    """A Hugging Face hub cache (point HF_HUB_CACHE at it) holding synth.py's default generator under its real
    repo ids: the tiny pipeline as Lykon/dreamshaper-7 and a tiny LoRA as latent-consistency/lcm-lora-sdv1-5.

    Like the real DreamShaper-7 snapshot, its model_index.json names a safety checker and a feature extractor and
    its scheduler is not LCM; the safety checker's weights are absent, so a loader that does not skip it fails.
    Returns {repo id: snapshot folder}."""
    from diffusers import PNDMScheduler
    from transformers import CLIPImageProcessor
    import kit  # here, so that `python tests/kit_diffusers.py DIR` runs without the repository on sys.path
    cache = Path(cache)
    pipe_dir = make_tiny_pipeline(cache.parent / f"{cache.name}_pipeline", seed=seed, scheduler_cls=PNDMScheduler)
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(pipe_dir / "feature_extractor")
    index = json.loads((pipe_dir / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (pipe_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    lora_dir = make_tiny_lora(cache.parent / f"{cache.name}_lora", pipe_dir, seed=seed)
    return {repo: kit.add_to_hub_cache(cache, repo, folder) for repo, folder in
            (("Lykon/dreamshaper-7", pipe_dir), ("latent-consistency/lcm-lora-sdv1-5", lora_dir))}


def use_hub_cache(monkeypatch, cache):
    """Point huggingface_hub (which read HF_HUB_CACHE when imported) at `cache` for one test."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


if __name__ == "__main__":
    print(make_tiny_pipeline(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_sd"))
