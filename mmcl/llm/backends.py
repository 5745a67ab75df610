"""Vision-language backends for ``mmcl extract-text``, all through Transformers (no cloned repos).

=================  ==========================================  ==================================
``--llm``          model class                                 prompt sent to the model
=================  ==========================================  ==================================
``blip``           ``BlipForQuestionAnswering`` (VQA)          the question
``blip2``          ``Blip2ForConditionalGeneration``           ``Question: {q} Answer:``
``instructblip``   ``InstructBlipForConditionalGeneration``    the instruction
``auto``           ``AutoModelForImageTextToText`` (or         the model's chat template with one
                   ``AutoModelForVision2Seq`` on older         image and the question (raw
                   Transformers): LLaVA, Qwen2-VL, InternVL,   question when it has none)
                   Idefics, PaliGemma, ...
=================  ==========================================  ==================================

Every backend answers one prompt for a batch of images with greedy decoding and returns, per
image: the answer text, the generated token ids (upstream-compatible: for BLIP they start with
the decoder's ``[DEC]`` token, as the original MMCL script saved them) and P(yes), P(no) from the
first generated token's logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mmcl.errors import MMCLError
from mmcl.hub import check_remote_code, dtype_kwargs, load_or_explain, resolve_model

log = logging.getLogger(__name__)

DEFAULT_MODELS: dict[str, str | None] = {
    "blip": "Salesforce/blip-vqa-base",
    "blip2": "Salesforce/blip2-opt-2.7b",
    "instructblip": "Salesforce/instructblip-vicuna-7b",
    "auto": None,  # no sensible default: the user picks the model (e.g. llava-hf/llava-1.5-7b-hf)
}
_YES = ("yes", "Yes", " yes", " Yes")
_NO = ("no", "No", " no", " No")


@dataclass
class Generation:
    """One prompt answered for a batch of images."""

    answers: list[str]
    token_ids: list[list[int]]  # generated ids (BLIP: with its leading [DEC] token)
    yes_no: np.ndarray  # float32 (B, 2): P(yes), P(no) of the first generated token, normalised


class VisionLanguageModel:
    """A loaded model + processor that answers a question about a batch of images."""

    name = "auto"
    decoder_only = True  # left-pad prompts so generation continues right after each one

    def __init__(self, model: str, *, device: Any, dtype: Any, device_map: str | None = None,
                 trust_remote_code: bool = False, allow_download: bool = False) -> None:
        from transformers import AutoProcessor

        source, kwargs = resolve_model(model, allow_download=allow_download, default_id=DEFAULT_MODELS.get(self.name))
        check_remote_code(source, kwargs, trust_remote_code)
        self.model_id = model
        load_kw = dict(kwargs, trust_remote_code=trust_remote_code)
        self.processor = load_or_explain("processor", source, kwargs,
                                         lambda: AutoProcessor.from_pretrained(source, **load_kw))
        model_kw = dict(load_kw, **dtype_kwargs(dtype))
        if device_map:
            model_kw["device_map"] = device_map
        self.model = load_or_explain("model", source, kwargs, lambda: self._load_model(source, model_kw))
        if not device_map:
            self.model.to(device)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.dtype = dtype
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.decoder_only:
            self.tokenizer.padding_side = "left"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self._yes_no_ids: tuple[list[int], list[int]] | None = None

    # -- per-backend hooks ---------------------------------------------------------------
    def _load_model(self, source: str, kwargs: dict[str, Any]) -> Any:
        import transformers

        errors = []
        for cls_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
            cls = getattr(transformers, cls_name, None)
            if cls is None:
                continue
            try:
                return cls.from_pretrained(source, **kwargs)
            except ValueError as exc:  # config not mapped to this auto class
                errors.append(f"{cls_name}: {exc}")
        raise MMCLError(f"{source}: not an image-text-to-text model Transformers knows "
                        f"({'; '.join(errors)}); for GLM-4V, DeepSeek-VL and other custom-code models "
                        "pass --trust-remote-code")

    def format_prompt(self, prompt: str) -> str:
        """The text given to the processor for one question about one image."""
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not template:
            return prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _inputs(self, images: Sequence[Any], prompt: str) -> Any:
        text = self.format_prompt(prompt)
        inputs = self.processor(images=list(images), text=[text] * len(images), return_tensors="pt", padding=True)
        return inputs.to(self.device, dtype=self.dtype)

    # -- shared ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, images: Sequence[Any], prompt: str, *, max_new_tokens: int, num_beams: int = 1
    ) -> Generation:
        """Answer ``prompt`` about each image: greedy decoding, or beam search with ``num_beams``
        beams. The yes/no probabilities come from the first answer token's distribution, which
        does not depend on the number of beams."""
        inputs = self._inputs(images, prompt)
        extra = {} if self.name == "blip" else {"pad_token_id": self.pad_id}  # BLIP sets its own
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
            output_logits=True, return_dict_in_generate=True, **extra,
        )
        first = out.logits[0][::num_beams]  # beams are laid out sample by sample; at step 1 they agree
        seq = out.sequences
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and seq.shape[1] >= prompt_ids.shape[1] and torch.equal(
            seq[:, : prompt_ids.shape[1]], prompt_ids.to(seq.device)
        ):
            seq = seq[:, prompt_ids.shape[1]:]  # decoder-only models return the prompt too
        token_ids = [_strip_padding(row.tolist(), self.pad_id) for row in seq]
        answers = [a.strip() for a in self.tokenizer.batch_decode(seq, skip_special_tokens=True)]
        return Generation(answers, token_ids, self._yes_no(first))

    def _yes_no(self, logits: torch.Tensor) -> np.ndarray:
        yes, no = self.yes_no_ids()
        logp = torch.log_softmax(logits.float(), dim=-1)
        pair = torch.stack([torch.logsumexp(logp[:, yes], -1), torch.logsumexp(logp[:, no], -1)], -1)
        return torch.softmax(pair, -1).cpu().numpy().astype(np.float32)

    def yes_no_ids(self) -> tuple[list[int], list[int]]:
        """Token ids that start "yes" and "no" answers (casing and leading-space variants)."""
        if self._yes_no_ids is None:
            groups = []
            for words in (_YES, _NO):
                ids = set()
                for w in words:
                    toks = self.tokenizer.encode(w, add_special_tokens=False)
                    if toks and toks[0] != self.tokenizer.unk_token_id:
                        ids.add(int(toks[0]))
                groups.append(ids)
            yes, no = groups[0] - groups[1], groups[1] - groups[0]
            if not yes or not no:
                raise MMCLError(f"{self.model_id}: its tokenizer has no token for 'yes' or 'no', so "
                                "--feature yesno is impossible; use --feature embedding or tokens")
            self._yes_no_ids = (sorted(yes), sorted(no))
        return self._yes_no_ids

    @torch.inference_mode()
    def embed_tokens(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean of the model's input token embeddings over each answer's non-special tokens
        (zeros for an empty answer): the default ``embedding`` feature, no extra forward pass."""
        table = self.model.get_input_embeddings()
        special = set(self.tokenizer.all_special_ids)
        out = np.zeros((len(token_ids), table.embedding_dim), np.float32)
        for i, ids in enumerate(token_ids):
            keep = [t for t in ids if t not in special and t < table.num_embeddings]
            if keep:
                vec = table(torch.tensor(keep, device=table.weight.device)).float().mean(0)
                out[i] = vec.cpu().numpy()
        return out


class Blip(VisionLanguageModel):
    """BLIP VQA: the question goes through BLIP's text encoder, the answer comes from its decoder."""

    name = "blip"
    decoder_only = False

    def _load_model(self, source: str, kwargs: dict[str, Any]) -> Any:
        from transformers import BlipForQuestionAnswering

        return BlipForQuestionAnswering.from_pretrained(source, **kwargs)

    def format_prompt(self, prompt: str) -> str:
        return prompt


class Blip2(VisionLanguageModel):
    """BLIP-2 (OPT or Flan-T5 language model), VQA prompt format from its model card."""

    name = "blip2"

    def _load_model(self, source: str, kwargs: dict[str, Any]) -> Any:
        from transformers import Blip2ForConditionalGeneration

        return Blip2ForConditionalGeneration.from_pretrained(source, **kwargs)

    def format_prompt(self, prompt: str) -> str:
        return f"Question: {prompt} Answer:"


class InstructBlip(VisionLanguageModel):
    """InstructBLIP: the instruction is given as it is (the processor feeds the Q-Former too)."""

    name = "instructblip"

    def _load_model(self, source: str, kwargs: dict[str, Any]) -> Any:
        from transformers import InstructBlipForConditionalGeneration

        return InstructBlipForConditionalGeneration.from_pretrained(source, **kwargs)

    def format_prompt(self, prompt: str) -> str:
        return prompt


BACKENDS: dict[str, type[VisionLanguageModel]] = {
    "blip": Blip,
    "blip2": Blip2,
    "instructblip": InstructBlip,
    "auto": VisionLanguageModel,
}


def load_backend(llm: str, model: str | None, **kwargs: Any) -> VisionLanguageModel:
    """Instantiate the ``--llm`` backend for ``--model`` (default: the backend's usual model)."""
    if llm not in BACKENDS:
        raise MMCLError(f"--llm {llm!r}: choose one of {sorted(BACKENDS)}")
    model = model or DEFAULT_MODELS[llm]
    if model is None:
        raise MMCLError(f"--llm {llm} needs --model (a local folder or hub id, e.g. llava-hf/llava-1.5-7b-hf "
                        "or Qwen/Qwen2-VL-2B-Instruct)")
    return BACKENDS[llm](model, **kwargs)


def _strip_padding(ids: list[int], pad_id: int | None) -> list[int]:
    """Drop the right padding that batched generation adds after a finished answer."""
    end = len(ids)
    while pad_id is not None and end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]
