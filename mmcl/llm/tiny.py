"""Tiny randomly initialised models, built from configs and saved like hub models.

Tests and benchmarks run the real ``extract-text`` code path on them with nothing downloaded;
a user can also try the command end to end this way (``python -m mmcl.llm.tiny DIR``).
Their answers are random words: they exercise the machinery, not the science.
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = ("yes no a an the person people is are holding objects object hand hands touching head foot "
         "feet whether please describe what ? . , : user assistant of and on with in his her left right "
         "standing sitting arm arms up down").split()
FILLER = [f"w{i}" for i in range(40)]


def build_tiny_blip(out: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A BLIP VQA model (2-layer ViT and text towers, width 32) with a BERT tokenizer."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS, *FILLER]
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=5, sep_token_id=3,
                         pad_token_id=0, encoder_hidden_size=32, initializer_range=0.5),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, initializer_range=0.5),
        projection_dim=32, initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _word_tokenizer(extra_special: list[str]):
    """A lower-casing word-level fast tokenizer over :data:`WORDS`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<s>", "</s>", *extra_special]
    vocab = {t: i for i, t in enumerate([*special, *WORDS, *FILLER])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens=extra_special)
    return tok, vocab


def build_tiny_llava(out: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A LLaVA-1.5-style model (CLIP vision tower, Llama language model, width 32) with a
    processor and a chat template."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = _word_tokenizer(["<image>"])
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8, projection_dim=32,
                           initializer_range=0.5),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                         pad_token_id=vocab["<pad>"], initializer_range=0.5),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_blip2(out: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A BLIP-2 model (ViT, 4-query Q-Former, OPT language model, width 32) with its processor."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = _word_tokenizer(["<image>"])
    processor = Blip2Processor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer,
                               num_query_tokens=4)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, initializer_range=0.5),
        qformer_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64),
        text_config=dict(model_type="opt", vocab_size=len(vocab), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=256, word_embed_proj_dim=32,
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
                         init_std=0.5),
        num_query_tokens=4, image_token_index=vocab["<image>"], initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_text_encoder(out: Path, *, seed: int = 0) -> Path:
    """A 2-layer BERT sentence encoder (width 24) with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *FILLER]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=128)).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_vit(out: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer ViT image backbone (width 24) with its image processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=8)).eval()
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


if __name__ == "__main__":  # python -m mmcl.llm.tiny DIR: write them all into DIR
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    for name, build in (("blip", build_tiny_blip), ("blip2", build_tiny_blip2), ("llava", build_tiny_llava),
                        ("text-encoder", build_tiny_text_encoder), ("vit", build_tiny_vit)):
        print(build(root / name))
