"""``mmcl extract-text``: LLM text features and cached RGB features (logic in :mod:`mmcl.llm`)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

HELP = """Ask a multimodal LLM about each sample's RGB strip; save the answers as features.

\b
Reads DATA/rgb/<name>.jpg (made by `mmcl prepare ... --videos DIR` or
`--frames DIR`) and writes, following the feature-file contract:
  DATA/features/text_<llm>_<feature>.npz   names, features [N, D], meta
  DATA/features/answers.jsonl              {"name", "prompt", "answer"} per line
Training joins them to samples by name.

\b
Backends (--llm), all through Transformers, nothing cloned:
  blip          BlipForQuestionAnswering (default, Salesforce/blip-vqa-base)
  blip2         Blip2ForConditionalGeneration ("Question: ... Answer:")
  instructblip  InstructBlipForConditionalGeneration
  auto          any image-text-to-text model with its chat template:
                LLaVA, Qwen2-VL / Qwen2.5-VL, InternVL, Idefics, PaliGemma...
Models needing their own code (GLM-4V, DeepSeek-VL) run only with
--trust-remote-code.

\b
Prompts: --prompt takes text or a template with {target} and {action},
filled by each --pair TARGET[:ACTION]. Built-in sets (--prompt-set) are the
paper's: paper-yesno ("Whether the {target} is {action}?" for person/holding
objects, hand/touching head, hand/touching foot), paper-describe ("Please
describe the {target}." for person, hand, foot), paper (both). Default: the
first paper-yesno question, as upstream.

\b
Features (--feature), concatenated over prompts:
  yesno      P(yes), P(no) of the first answer token: 2 numbers per prompt
             (default when every prompt is a yes/no question)
  embedding  mean-pooled answer embedding: the LLM's input embeddings, or
             --text-encoder PATH (any AutoModel sentence encoder)
  tokens     generated token ids, padded/truncated to --token-length
             (3 = BLIP's [DEC] answer [SEP], the upstream feature)

\b
Offline by default: --model is a local folder (or a hub id already in the
Hugging Face cache); nothing is downloaded unless --allow-download. Get one:
  huggingface-cli download Salesforce/blip-vqa-base --local-dir models/blip-vqa-base

\b
Scale: batched generation, bf16 on GPU (--dtype), --device-map auto for a
model larger than one GPU. Under `accelerate launch` every process takes a
disjoint shard and the main process merges them. Results are flushed every
--flush-every samples; re-running the same command resumes.

\b
RGB features for FAM (same command, no LLM):
  mmcl extract-text --data DATA --image-features --image-encoder PATH
writes DATA/features/rgb_<encoder>.npz: pooled features of a frozen image
backbone (ViT, CLIP, DINOv2, ResNet... any AutoModel folder).

\b
Examples:
  mmcl extract-text --data data/ntu120 --model models/blip-vqa-base
\b
  mmcl extract-text --data data/ntu120 --llm auto --model models/llava-1.5-7b-hf \\
      --prompt-set paper --feature embedding --batch-size 32
\b
  mmcl extract-text --data data/ntu120 --model models/blip-vqa-base \\
      --prompt "Whether the {target} is {action}?" --pair "person:drinking water" \\
      --pair "hand:touching head" --feature yesno
\b
  accelerate launch --multi_gpu --num_processes 8 -m mmcl extract-text \\
      --data data/ntu120 --llm auto --model models/Qwen2-VL-7B-Instruct --batch-size 64
\b
  mmcl extract-text --data data/ntu120 --image-features --image-encoder models/dinov2-base
"""


@click.command("extract-text", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Prepared dataset folder (with rgb/ strips).")
@click.option("--llm", type=click.Choice(["blip", "blip2", "instructblip", "auto"]), default="blip",
              show_default=True, help="Backend family.")
@click.option("--model", default=None, help="Local model folder or cached hub id (default per --llm).")
@click.option("--prompt", "prompts", multiple=True, help="Question or template (repeatable).")
@click.option("--prompt-set", type=click.Choice(["paper-yesno", "paper-describe", "paper"]), default=None,
              help="Built-in prompts from the paper.")
@click.option("--pair", "pairs", multiple=True, metavar="TARGET[:ACTION]",
              help="Fills {target}/{action} of templates (repeatable).")
@click.option("--feature", type=click.Choice(["auto", "yesno", "embedding", "tokens"]), default="auto",
              show_default=True, help="What to store per prompt.")
@click.option("--text-encoder", default=None, help="Sentence encoder for --feature embedding.")
@click.option("--token-length", default=3, show_default=True, type=int, help="Ids kept for --feature tokens.")
@click.option("--max-new-tokens", default=None, type=int, help="Answer length cap [10 for yes/no prompts, else 48].")
@click.option("--num-beams", default=1, show_default=True, type=click.IntRange(min=1),
              help="Beam search width for the answers (1: greedy). BLIP's released VQA code uses 3.")
@click.option("--batch-size", default=16, show_default=True, type=int, help="Images per generate call.")
@click.option("--workers", default=2, show_default=True, type=int, help="Image-loading worker processes.")
@click.option("--flush-every", default=256, show_default=True, type=int, help="Samples between partial saves.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: bf16/fp16 on GPU, fp32 on CPU.")
@click.option("--device-map", default=None, help="e.g. auto: spread one large model over the GPUs.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run.")
@click.option("--allow-download", is_flag=True, help="Let Transformers download missing models.")
@click.option("--image-features", is_flag=True, help="Extract RGB features with --image-encoder instead.")
@click.option("--image-encoder", default=None, help="Image backbone folder or cached hub id.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Feature file [DATA/features/text_<llm>_<feature>.npz or rgb_<encoder>.npz].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--restart", is_flag=True, help="Discard partial results of an interrupted run.")
def extract_text(data: Path, llm: str, model: str | None, prompts: tuple[str, ...], prompt_set: str | None,
                 pairs: tuple[str, ...], feature: str, text_encoder: str | None, token_length: int,
                 max_new_tokens: int | None, num_beams: int, batch_size: int, workers: int, flush_every: int,
                 dtype: str, device_map: str | None, trust_remote_code: bool, allow_download: bool,
                 image_features: bool, image_encoder: str | None, out: Path | None, overwrite: bool,
                 restart: bool) -> None:
    from tabulate import tabulate

    from mmcl.llm import extract
    from mmcl.llm.prompts import resolve_prompts

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if image_features or image_encoder:
        if not image_encoder:
            raise click.UsageError("--image-features needs --image-encoder PATH (e.g. a ViT/CLIP/DINOv2 folder)")
        result = extract.extract_image_features(
            data, image_encoder, out=out, batch_size=batch_size, workers=workers, flush_every=flush_every,
            dtype=dtype, trust_remote_code=trust_remote_code, allow_download=allow_download,
            overwrite=overwrite, restart=restart)
    else:
        opts = extract.TextOptions(
            data=data, llm=llm, model=model, prompts=resolve_prompts(prompts, prompt_set, pairs), feature=feature,
            text_encoder=text_encoder, token_length=token_length, max_new_tokens=max_new_tokens,
            num_beams=num_beams, batch_size=batch_size, workers=workers, flush_every=flush_every, dtype=dtype,
            device_map=device_map, trust_remote_code=trust_remote_code, allow_download=allow_download, out=out,
            overwrite=overwrite, restart=restart)
        result = extract.extract_text(opts)
    if not result.main:
        return
    rows = [["features", str(result.path)], ["samples", result.samples], ["dimension", result.dim],
            ["wall time", f"{result.seconds:.1f} s (this run; resumed samples were not redone)"],
            ["samples per process", ", ".join(f"{k}: {v}" for k, v in sorted(result.per_process.items()))]]
    if result.missing_strips:
        rows.append(["no strip (skipped)", f"{len(result.missing_strips)}: {', '.join(result.missing_strips[:3])}..."])
    click.echo(tabulate(rows, tablefmt="plain"))
