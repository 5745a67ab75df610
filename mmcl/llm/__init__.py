"""Multimodal-LLM text features and cached RGB features for ``mmcl extract-text``.

Modules: ``prompts`` (templates, the paper's built-in set), ``loading`` (offline-first model
resolution, trust_remote_code guard), ``backends`` (BLIP, BLIP-2, InstructBLIP, any
image-text-to-text model), ``encoders`` (sentence and image encoders), ``runner`` (sharded,
resumable batches), ``extract`` (the two pipelines), ``tiny`` (tiny models for tests).
Nothing here is imported by ``mmcl.llm`` itself, so importing the package is free.
"""
