"""A tiny Stable Diffusion pipeline for offline tests (DESIGN.md): random weights, real classes.

  make_tiny_pipeline(dir)   StableDiffusionPipeline (UNet block_out_channels (32, 64), a 4-block VAE of
                            8 channels, a 2-layer CLIPTextModel of width 32, CLIPTokenizer from open_clip's
                            bundled BPE file, LCMScheduler) saved with save_pretrained; synth.py loads it with
                            `--generator DIR`, through the same AutoPipelineForText2Image path as the hub ids.

From the command line: `python tests/kit_diffusers.py DIR` saves the pipeline to DIR.
Its native size is 64 px (UNet sample_size 8 x VAE factor 8). One 64 px image takes a few ms per step on a CPU.
"""
import gzip
import sys
from pathlib import Path

import torch


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


def make_tiny_pipeline(folder, seed=0):
    """Build, save and return the path of a random-weight StableDiffusionPipeline (64 px native)."""
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
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
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def make_tiny_lora(folder, pipeline_dir, seed=0):
    """A random LoRA (rank 4, attention projections) for the tiny UNet, saved like the hub's LCM-LoRAs
    (pytorch_lora_weights.safetensors); returns the folder. B is random too, so the LoRA changes the output."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    layers = {k: 0.5 * torch.randn(v.shape, generator=gen)
              for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)).items()}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return Path(folder)


if __name__ == "__main__":
    print(make_tiny_pipeline(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_sd"))
