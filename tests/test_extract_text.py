"""``mmcl extract-text`` on tiny config-built BLIP / LLaVA models and real person-frame strips.

Nothing is downloaded: every model is built from a config, saved with ``save_pretrained`` to a
temporary folder and loaded back through the real code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CPU_ONLY_ENV
from mmcl.data.features import load_features
from mmcl.data.rgb import build_strips
from mmcl.data.store import DatasetWriter, Sample
from mmcl.errors import MMCLError
from mmcl.graphs import NTU
from mmcl.llm import backends
from mmcl.llm.extract import TextOptions, extract_image_features, extract_text, pad_tokens
from mmcl.llm.prompts import PROMPT_SETS, is_yes_no, resolve_prompts
from mmcl.llm.runner import partial_dir
from mmcl.llm.tiny import build_tiny_blip, build_tiny_blip2, build_tiny_llava, build_tiny_text_encoder, build_tiny_vit

REPO = Path(__file__).resolve().parents[1]
REAL = {"S001C001P001R001A001": "NTU60", "S001C001P001R001A002": "NTU60",
        "S018C001P008R001A061": "NTU120", "S018C001P008R001A062": "NTU120"}
ALIASES = {"S002C001P001R001A001": "S001C001P001R001A001", "S002C001P001R001A002": "S018C001P008R001A061"}
NO_STRIP = "S003C001P001R001A001"
YESNO = list(PROMPT_SETS["paper-yesno"][:2])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> Path:
    """7 samples; 6 get strips from the real person frames (2 under new names), 1 has none."""
    root = tmp_path_factory.mktemp("extract")
    frames = root / "frames" / "NTU60"
    frames.mkdir(parents=True)
    real = shared_data / "ntu-rgb" / "person-frames"
    for name, group in REAL.items():
        (frames / name).symlink_to(real / group / name)
    for alias, name in ALIASES.items():
        (frames / alias).symlink_to(real / REAL[name] / name)
    names = [*REAL, *ALIASES, NO_STRIP]
    out = root / "ds"
    with DatasetWriter(out, name="toy", layout=NTU, num_person=2, channels=3, class_names=["a"],
                       has_colors=False, meta_fields=[], source={}) as w:
        for n in names:
            w.add(Sample(name=n, label=0, joints=np.ones((100, 2, 25, 3), np.float32)))
        w.finish({"all": {"train": names, "test": []}})
    rejected = build_strips(out, videos=None, frames=root / "frames", k=5, workers=0, height=64, progress=False)
    assert [n for n, _ in rejected] == [NO_STRIP]
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"blip": build_tiny_blip(root / "blip"), "llava": build_tiny_llava(root / "llava"),
            "text": build_tiny_text_encoder(root / "text-encoder"), "vit": build_tiny_vit(root / "vit")}


@pytest.fixture(scope="module")
def blip_yesno(dataset, models) -> Path:
    """The reference run: tiny BLIP, two yes/no prompts, batch 4, one process."""
    result = extract_text(_opts(dataset, models["blip"]))
    assert result.path == dataset / "features" / "text_blip_yesno.npz"
    assert result.samples == 6 and result.dim == 4
    return result.path


def _strip_names() -> list[str]:
    return [*REAL, *ALIASES]  # dataset order, without the sample that has no strip


def _opts(dataset: Path, model: Path, **kw) -> TextOptions:
    base = dict(data=dataset, model=str(model), prompts=YESNO, batch_size=4, workers=0, progress=False)
    return TextOptions(**{**base, **kw})


def _raw_blip(model_dir: Path, image_path: Path, prompt: str, num_beams: int = 1):
    """The BLIP computation done by hand with plain Transformers, one image."""
    from PIL import Image
    from transformers import AutoProcessor, BlipForQuestionAnswering

    proc = AutoProcessor.from_pretrained(model_dir)
    model = BlipForQuestionAnswering.from_pretrained(model_dir).eval()
    inputs = proc(images=Image.open(image_path).convert("RGB"), text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, num_beams=num_beams, output_logits=True,
                             return_dict_in_generate=True)
    probs = torch.softmax(out.logits[0][0], -1)
    yes, no = proc.tokenizer.convert_tokens_to_ids(["yes", "no"])
    p = np.array([probs[yes].item(), probs[no].item()])
    answer = proc.tokenizer.decode(out.sequences[0], skip_special_tokens=True).strip()
    return p / p.sum(), out.sequences[0].tolist(), answer


def test_blip_yesno_features_follow_the_contract(dataset, models, blip_yesno):
    out = blip_yesno
    f = load_features(out)
    assert f.names.tolist() == _strip_names()  # the sample without a strip is skipped, and said so
    assert f.meta["missing_strip_names"] == [NO_STRIP] and f.meta["prompts"] == YESNO
    assert f.features.dtype == np.float32 and f.features.shape == (6, 4)
    np.testing.assert_allclose(f.features.reshape(6, 2, 2).sum(-1), 1.0, atol=1e-6)
    assert np.ptp(f.features[:, 0]) > 1e-3  # the answers depend on the image

    lines = [json.loads(line) for line in (out.parent / "answers.jsonl").read_text().splitlines()]
    lines = [r for r in lines if r["features"] == out.name]
    assert len(lines) == 6 * 2
    assert {(r["name"], r["prompt"]) for r in lines} == {(n, p) for n in _strip_names() for p in YESNO}
    # batched extraction equals the plain one-image Transformers computation
    for i in (0, 5):
        name = _strip_names()[i]
        for j, prompt in enumerate(YESNO):
            p, _, answer = _raw_blip(models["blip"], dataset / "rgb" / f"{name}.jpg", prompt)
            np.testing.assert_allclose(f.features[i, 2 * j: 2 * j + 2], p, atol=1e-5)
            assert next(r["answer"] for r in lines if r["name"] == name and r["prompt"] == prompt) == answer

    with pytest.raises(MMCLError, match="already exists; pass --overwrite"):
        extract_text(_opts(dataset, models["blip"]))


def test_beam_search_answers_match_transformers_and_keep_the_yes_no_probabilities(dataset, models, blip_yesno):
    out = dataset / "features" / "beams.npz"
    extract_text(_opts(dataset, models["blip"], num_beams=3, out=out))
    f, greedy = load_features(out), load_features(blip_yesno)
    assert f.meta["num_beams"] == 3 and greedy.meta["num_beams"] == 1
    # P(yes)/P(no) come from the first answer token, before the beams differ
    np.testing.assert_allclose(f.features, greedy.features, atol=1e-5)
    lines = [json.loads(line) for line in (out.parent / "answers.jsonl").read_text().splitlines()]
    for name in _strip_names()[::3]:
        _, seq, answer = _raw_blip(models["blip"], dataset / "rgb" / f"{name}.jpg", YESNO[1], num_beams=3)
        assert next(r["answer"] for r in lines
                    if r["features"] == out.name and r["name"] == name and r["prompt"] == YESNO[1]) == answer

    from PIL import Image

    llava = backends.load_backend("auto", str(models["llava"]), device="cpu", dtype=torch.float32)
    images = [Image.open(dataset / "rgb" / f"{n}.jpg").convert("RGB") for n in _strip_names()[:3]]
    beams, plain = (llava.generate(images, YESNO[0], max_new_tokens=3, num_beams=b) for b in (2, 1))
    assert all(len(ids) <= 3 for ids in beams.token_ids)  # the prompt is not part of the answer
    np.testing.assert_allclose(beams.yes_no, plain.yes_no, atol=1e-5)
    with pytest.raises(MMCLError, match="--num-beams must be at least 1"):
        extract_text(_opts(dataset, models["blip"], num_beams=0, out=dataset / "features" / "none.npz"))


def test_blip_tokens_are_the_upstream_three_numbers(dataset, models):
    out = dataset / "features" / "tokens.npz"
    extract_text(_opts(dataset, models["blip"], prompts=YESNO[:1], feature="tokens", out=out))
    f = load_features(out)
    assert f.features.shape == (6, 3) and f.meta["feature"] == "tokens"
    name = _strip_names()[2]
    _, seq, _ = _raw_blip(models["blip"], dataset / "rgb" / f"{name}.jpg", YESNO[0])
    assert f.features[2].tolist() == pad_tokens([seq], 3, 0)[0].tolist()
    assert (f.features[:, 0] == 5).all()  # every sequence starts with BLIP's [DEC] token, as upstream
    assert pad_tokens([[5, 7]], 4, 0).tolist() == [[5, 7, 0, 0]]


def test_llava_embedding_features_own_embeddings_and_text_encoder(dataset, models):
    from transformers import AutoModel, AutoTokenizer

    prompts = resolve_prompts(prompt_set="paper-describe")[:2]
    res = extract_text(_opts(dataset, models["llava"], llm="auto", prompts=prompts, max_new_tokens=4))
    f = load_features(res.path)
    assert res.path.name == "text_auto_embedding.npz"  # "describe" prompts choose embedding
    assert f.features.shape == (6, 2 * 32) and np.abs(f.features).sum() > 0

    out = dataset / "features" / "text_llava_sentence.npz"
    res = extract_text(_opts(dataset, models["llava"], llm="auto", prompts=prompts, max_new_tokens=4,
                             text_encoder=str(models["text"]), out=out))
    f = load_features(out)
    assert f.features.shape == (6, 2 * 24) and not np.allclose(f.features[:, :24], 0)
    answers = [json.loads(line) for line in (out.parent / "answers.jsonl").read_text().splitlines()]
    mine = [a for a in answers if a["features"] == out.name]
    assert len(mine) == 12 and any(a["features"] == "text_auto_embedding.npz" for a in answers)  # both kept
    tok = AutoTokenizer.from_pretrained(models["text"])
    enc = AutoModel.from_pretrained(models["text"]).eval()
    a = next(r["answer"] for r in mine if r["name"] == _strip_names()[1] and r["prompt"] == prompts[1])
    batch = tok([a], return_tensors="pt")
    with torch.no_grad():
        expected = enc(**batch).last_hidden_state.mean(1)[0].numpy()
    np.testing.assert_allclose(f.features[1, 24:], expected, atol=1e-5)


def test_blip2_backend_batches_like_single_images(dataset, tmp_path):
    from PIL import Image

    model = backends.load_backend("blip2", str(build_tiny_blip2(tmp_path / "blip2")), device="cpu",
                                  dtype=torch.float32)
    images = [Image.open(dataset / "rgb" / f"{n}.jpg").convert("RGB") for n in _strip_names()[:4]]
    batch = model.generate(images, YESNO[0], max_new_tokens=3)
    assert all(len(ids) <= 3 for ids in batch.token_ids)  # the prompt is not part of the answer
    for i in (0, 3):
        one = model.generate(images[i:i + 1], YESNO[0], max_new_tokens=3)
        np.testing.assert_allclose(batch.yes_no[i], one.yes_no[0], atol=1e-5)
        assert batch.answers[i] == one.answers[0]
    assert np.ptp(batch.yes_no[:, 0]) > 1e-4


def test_interrupted_run_resumes_without_redoing_samples(dataset, models, blip_yesno, monkeypatch):
    calls = {"n": 0, "kill_at": 3}
    original = backends.Blip.generate

    def counted(self, images, prompt, **kw):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise KeyboardInterrupt("simulated kill")
        return original(self, images, prompt, **kw)

    monkeypatch.setattr(backends.Blip, "generate", counted)
    out = dataset / "features" / "resume.npz"
    opts = _opts(dataset, models["blip"], prompts=YESNO[:1], batch_size=2, flush_every=2, out=out)
    with pytest.raises(KeyboardInterrupt):
        extract_text(opts)
    chunks = sorted(partial_dir(out).glob("chunk-*.npz"))
    assert len(chunks) == 2 and not out.exists()  # two flushed batches survive the kill; no output yet

    with pytest.raises(MMCLError, match="--restart"):  # other settings would mix results: refused
        extract_text(_opts(dataset, models["blip"], prompts=YESNO[1:], batch_size=2, out=out))

    calls.update(n=0, kill_at=-1)
    extract_text(opts)
    assert calls["n"] == 1  # only the 2 unfinished samples (one batch) were computed
    f = load_features(out)
    assert f.names.tolist() == _strip_names() and not partial_dir(out).exists()
    full = load_features(blip_yesno)  # uninterrupted run
    np.testing.assert_allclose(f.features, full.features[:, :2], atol=1e-5)


def test_trust_remote_code_is_refused_unless_asked(models, tmp_path, monkeypatch):
    import shutil

    import transformers.dynamic_module_utils as dyn

    custom = tmp_path / "custom-llava"
    shutil.copytree(models["llava"], custom)
    (custom / "custom_llava.py").write_text(
        "from transformers import LlavaConfig, LlavaForConditionalGeneration\n"
        "class CustomLlavaConfig(LlavaConfig):\n    model_type = 'custom_llava'\n"
        "class CustomLlava(LlavaForConditionalGeneration):\n    config_class = CustomLlavaConfig\n")
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="custom_llava", auto_map={"AutoConfig": "custom_llava.CustomLlavaConfig",
                                                     "AutoModelForImageTextToText": "custom_llava.CustomLlava"})
    (custom / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep ~/.cache clean
    monkeypatch.setattr(sys, "path", list(sys.path))

    with pytest.raises(MMCLError, match="--trust-remote-code"):
        backends.load_backend("auto", str(custom), device="cpu", dtype=torch.float32)
    assert not (tmp_path / "modules").exists()  # nothing of the custom code was even copied

    b = backends.load_backend("auto", str(custom), device="cpu", dtype=torch.float32, trust_remote_code=True)
    assert type(b.model).__name__ == "CustomLlava"


def test_missing_model_says_how_to_get_it(dataset, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mmcl.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMCLError, match="huggingface-cli download Salesforce/blip-vqa-base"):
        backends.load_backend("blip", str(tmp_path / "no-such-model"), device="cpu", dtype=torch.float32)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MMCLError, match="not found in the local Hugging Face cache.*huggingface-cli download"):
        backends.load_backend("blip", "someone/not-cached-model", device="cpu", dtype=torch.float32)
    with pytest.raises(MMCLError, match="needs --model"):
        backends.load_backend("auto", None, device="cpu", dtype=torch.float32)

    result = CliRunner().invoke(main, ["extract-text", "--data", str(dataset), "--model", str(tmp_path / "nope"),
                                       "--out", str(tmp_path / "x.npz")])
    assert result.exit_code != 0 and "huggingface-cli download" in result.output


def test_image_features_for_fam(dataset, models):
    from PIL import Image
    from transformers import AutoImageProcessor, ViTModel

    res = extract_image_features(dataset, str(models["vit"]), batch_size=4, workers=0, progress=False)
    assert res.path == dataset / "features" / "rgb_vit.npz"
    f = load_features(res.path)
    assert f.names.tolist() == _strip_names() and f.features.shape == (6, 24) and f.meta["kind"] == "rgb"
    proc = AutoImageProcessor.from_pretrained(models["vit"])
    vit = ViTModel.from_pretrained(models["vit"]).eval()
    img = Image.open(dataset / "rgb" / f"{_strip_names()[3]}.jpg").convert("RGB")
    with torch.no_grad():
        expected = vit(**proc(images=img, return_tensors="pt")).pooler_output[0].numpy()
    np.testing.assert_allclose(f.features[3], expected, atol=1e-5)


def test_prompts_templates_and_help():
    from click.testing import CliRunner

    from mmcl.cli import main

    assert resolve_prompts() == ["Whether the person is holding objects?"]
    assert resolve_prompts(["Whether the {target} is {action}?", "Please describe the {target}."],
                           pairs=["hand:touching head", "foot:kicking"]) == [
        "Whether the hand is touching head?", "Whether the foot is kicking?",
        "Please describe the hand.", "Please describe the foot."]
    assert len(resolve_prompts(prompt_set="paper")) == 6
    assert is_yes_no("Whether the hand is touching head?") and not is_yes_no("Please describe the hand.")
    with pytest.raises(MMCLError, match="no --pair"):
        resolve_prompts(["Whether the {target} is {action}?"])
    with pytest.raises(MMCLError, match="unknown field"):
        resolve_prompts(["Is the {actor} here?"], pairs=["x"])
    out = CliRunner().invoke(main, ["extract-text", "--help"]).output
    assert "--image-features" in out and "Examples:" in out and "accelerate launch" in out


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_merge_each_sample_once(dataset, models, blip_yesno, tmp_path):
    out = tmp_path / "sharded.npz"
    env = {**os.environ, **CPU_ONLY_ENV, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "mmcl", "extract-text", "--data", str(dataset), "--model", str(models["blip"]),
           "--prompt", YESNO[0], "--prompt", YESNO[1], "--batch-size", "2", "--flush-every", "2",
           "--workers", "0", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    f = load_features(out)
    assert sorted(f.names.tolist()) == sorted(_strip_names())  # every sample, exactly once
    per_process = f.meta["samples_per_process"]
    assert set(per_process) == {"0", "1"} and sum(per_process.values()) == 6 and min(per_process.values()) > 0
    single = load_features(blip_yesno)
    np.testing.assert_allclose(f.take(single.names.tolist()), single.features, atol=1e-5)
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and len({(a["name"], a["prompt"]) for a in answers}) == 12
