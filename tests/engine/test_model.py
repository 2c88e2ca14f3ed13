"""Model loading: local folders only, clear errors, fingerprints that follow what changes KV."""

import shutil

import pytest

from segcache.engine.model import choose_dtype, load_model, resolve_model


def test_unknown_model_spec_says_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_model(str(tmp_path / "nothing-here"))
    with pytest.raises(FileNotFoundError):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_changed_chat_template_changes_the_tokenizer_fingerprint(tiny_model_dir, tmp_path):
    copy = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, copy)
    template = copy / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    original, edited = load_model(str(tiny_model_dir), "float32"), load_model(str(copy), "float32")
    assert original.weights_fingerprint == edited.weights_fingerprint
    assert original.tokenizer_fingerprint != edited.tokenizer_fingerprint


def test_explicit_dtypes():
    import torch

    assert choose_dtype("float32") == torch.float32
    assert choose_dtype("bfloat16") == torch.bfloat16
    assert choose_dtype("auto") in (torch.float32, torch.bfloat16)
