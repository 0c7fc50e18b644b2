"""Model correctness: logits equal Hugging Face transformers, presets, configs, tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from charbench.engine.api import EngineConfig
from charbench.engine.model import PRESETS, ModelConfig, get_preset, rope_inv_freq
from charbench.engine.runner import make_runner, resolve_model_config
from charbench.engine.tokenizer import ByteTokenizer
from charbench.engine.weights import config_from_hf
from charbench.errors import ConfigError, DeviceError

PROMPTS = [[1, 5, 9, 33, 60, 4, 17], [1, 80, 81], [1] + list(range(10, 50)), [1, 7]]


def _hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("kind", ["llama_gqa", "llama3_rope_tied_bias", "qwen2_sharded"])
def test_logits_match_transformers(kind, hf_checkpoint, chunk_driver):
    folder, hf = hf_checkpoint(kind)
    runner = make_runner(EngineConfig(model=str(folder), kv_cache_gb=0.01, block_size=4))
    assert runner.weights_kind == "checkpoint"
    drv = chunk_driver(runner, scatter_seed=0)
    # all prompts prefilled in one batch (one chunk each)
    logits = drv.run(*[(i, p) for i, p in enumerate(PROMPTS)])
    for i, p in enumerate(PROMPTS):
        ref = _hf_logits(hf, p)
        torch.testing.assert_close(logits[i], ref[-1], atol=1e-4, rtol=1e-4)
    # then 6 batched decode steps, each compared with HF on the whole sequence
    seqs = [list(p) for p in PROMPTS]
    for step in range(6):
        nxt = [(31 * step + 7 * i) % 96 for i in range(len(seqs))]
        logits = drv.run(*[(i, [t]) for i, t in enumerate(nxt)])
        for i, t in enumerate(nxt):
            seqs[i].append(t)
            torch.testing.assert_close(logits[i], _hf_logits(hf, seqs[i])[-1], atol=1e-4, rtol=1e-4)


def test_every_position_matches_transformers(hf_checkpoint, chunk_driver):
    """Token-by-token through the decode path: every position's logits equal HF's."""
    folder, hf = hf_checkpoint("llama_gqa")
    runner = make_runner(EngineConfig(model=str(folder), kv_cache_gb=0.01, block_size=3))
    drv = chunk_driver(runner)
    ids = PROMPTS[2][:20]
    ref = _hf_logits(hf, ids)
    got = torch.stack([drv.run((0, [t]))[0] for t in ids])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_checkpoint_config_and_tokenizer(hf_checkpoint):
    folder, hf = hf_checkpoint("qwen2_sharded")
    assert (folder / "model.safetensors.index.json").is_file()
    cfg = resolve_model_config(str(folder))
    assert cfg.architecture == "qwen2" and cfg.attention_bias and not cfg.attention_out_bias
    assert cfg.num_kv_heads == 2 and cfg.head_dim == 16
    runner = make_runner(EngineConfig(model=str(folder), kv_cache_gb=0.01))
    tok = runner.tokenizer
    ids = tok.encode("w5 w6 w70")
    assert ids == [1, 8, 9, 73]
    assert tok.decode(ids) == "w5 w6 w70"
    assert tok.encode("w5", add_bos=False) == [8]
    assert tok.eos_token_id == 2
    assert tok.chat_template is None  # the fixture's tokenizer_config.json has none


def test_checkpoint_chat_template_is_exposed(hf_checkpoint, tmp_path):
    import json
    import shutil

    folder, _ = hf_checkpoint("llama_gqa")
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    tc = json.loads((copy / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (copy / "tokenizer_config.json").write_text(json.dumps(tc))
    from charbench.engine.tokenizer import HFTokenizer

    tok = HFTokenizer(copy, resolve_model_config(str(copy)))
    assert tok.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def test_llama3_rope_matches_transformers():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=params)
    hf_inv, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    mine = rope_inv_freq(get_preset("llama-3.1-8b"))
    torch.testing.assert_close(mine.float(), hf_inv.float(), rtol=1e-6, atol=0)


def test_config_from_old_style_json():
    raw = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
           "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": [128001, 128009],
           "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
           "max_position_embeddings": 131072}
    cfg = config_from_hf(raw, "x")
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0
    assert cfg.eos_token_id == 128001 and cfg.eos_token_ids == (128001, 128009)
    mistral = dict(raw, model_type="mistral", sliding_window=4096, rope_scaling=None)
    assert config_from_hf(mistral, "m").max_position_embeddings == 4096
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        config_from_hf(dict(raw, model_type="gpt2"), "g")
    with pytest.raises(ConfigError, match="rope scaling type 'yarn'"):
        rope_inv_freq(config_from_hf(dict(raw, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "y"))


def test_presets_shapes_and_counts():
    assert 1e6 < get_preset("tiny").params_count() < 10e6
    assert 90e6 < get_preset("small").params_count() < 130e6
    # published parameter counts of the real models
    assert get_preset("llama-2-7b").params_count() == 6_738_415_616
    assert get_preset("llama-2-13b").params_count() == 13_015_864_320
    assert get_preset("llama-2-70b").params_count() == 68_976_648_192
    assert get_preset("llama-3-8b").params_count() == 8_030_261_248
    assert get_preset("llama-3-70b").params_count() == 70_553_706_496
    cfg = get_preset("llama-2-7b")
    assert cfg.weight_bytes("bf16") == 2 * cfg.params_count()
    assert cfg.weight_bytes("fp32") == 4 * cfg.params_count()
    # 2 FLOPs per matmul weight (embedding excluded) + 4 * layers * q_size per context token
    matmul = cfg.params_count() - cfg.vocab_size * cfg.hidden_size - cfg.num_layers * 2 * 4096 - 4096
    assert cfg.flops_per_token() == 2 * matmul
    assert cfg.flops_per_token(100) - cfg.flops_per_token() == 4 * 32 * 4096 * 100
    for name in PRESETS:
        assert get_preset(name).name == name


def test_unknown_preset_and_bad_configs():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; valid: tiny, small"):
        resolve_model_config("nope")
    with pytest.raises(ConfigError, match="not a folder"):
        resolve_model_config("/does/not/exist")
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        ModelConfig("bad", 10, 8, 1, 4, 3, 2, 8)
    with pytest.raises(ConfigError, match="--dtype: unknown dtype 'fp64'"):
        make_runner(EngineConfig(model="tiny", dtype="fp64"))
    with pytest.raises(ConfigError, match="--attention-backend"):
        make_runner(EngineConfig(model="tiny", attention_backend="flash"))


def test_preset_name_beats_unrelated_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder named like a preset, without config.json
    assert resolve_model_config("tiny").name == "tiny"


def test_missing_files_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        make_runner(EngineConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1,
         "num_attention_heads": 2, "intermediate_size": 8}))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        make_runner(EngineConfig(model=str(tmp_path)))
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel(vocab={"<unk>": 0}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="no \\*.safetensors files"):
        make_runner(EngineConfig(model=str(tmp_path)))


def test_byte_tokenizer():
    tok = ByteTokenizer(32000)
    ids = tok.encode("héllo")
    assert ids[0] == 256 and len(ids) == 1 + len("héllo".encode())
    assert tok.decode(ids + [257]) == "héllo"
    assert tok.encode("a", add_bos=False) == [97]
    assert tok.decode([258, 259, 258 + 94]) == "!\"!"
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (256, 257, 32000)


def test_random_weights_reproducible_and_seeded(chunk_driver):
    def logits(seed: int) -> torch.Tensor:
        r = make_runner(EngineConfig(model="tiny", kv_cache_gb=0.002, seed=seed))
        assert r.weights_kind == "random"
        return chunk_driver(r).run((0, [256, 1, 2, 3]))[0]

    a, b, c = logits(0), logits(0), logits(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_close_to_fp32(dtype, chunk_driver):
    """Same random weights in bf16/fp16: logits close to fp32 (a sanity check of casts)."""
    ids = [256] + list(b"The quick brown fox")
    ref = chunk_driver(make_runner(EngineConfig(model="tiny", kv_cache_gb=0.002))).run((0, ids))[0]
    try:
        runner = make_runner(EngineConfig(model="tiny", dtype=dtype, kv_cache_gb=0.002))
    except DeviceError as exc:  # a CPU without that dtype's matmul says so; any other error fails
        pytest.skip(str(exc))
    got = chunk_driver(runner).run((0, ids))[0]
    assert got.dtype == torch.float32
    tol = 0.08 if dtype == "bf16" else 0.02
    assert (got - ref).abs().max() < tol * ref.abs().max() + tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_logits_match_transformers(backend, hf_checkpoint, chunk_driver, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    folder, hf = hf_checkpoint("llama_gqa")
    runner = make_runner(EngineConfig(model=str(folder), device="cuda", kv_cache_gb=0.01,
                                      block_size=4, attention_backend=backend))
    drv = chunk_driver(runner, scatter_seed=0)
    logits = drv.run(*[(i, p) for i, p in enumerate(PROMPTS)]).cpu()
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(logits[i], _hf_logits(hf, p)[-1], atol=1e-4, rtol=1e-4)
    seqs = [list(p) for p in PROMPTS]
    for step in range(3):
        nxt = [(13 * step + 5 * i) % 96 for i in range(len(seqs))]
        logits = drv.run(*[(i, [t]) for i, t in enumerate(nxt)]).cpu()
        for i, t in enumerate(nxt):
            seqs[i].append(t)
            torch.testing.assert_close(logits[i], _hf_logits(hf, seqs[i])[-1], atol=1e-4, rtol=1e-4)


def test_incomplete_checkpoint_config_is_a_config_error(tmp_path):
    from charbench.engine.weights import config_from_checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ConfigError, match=r"config.json has no 'num_attention_heads'; is it a Hugging Face Llama-family checkpoint"):
        config_from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "wide", "num_attention_heads": 4}))
    with pytest.raises(ConfigError, match="config.json has a malformed value"):
        config_from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        config_from_checkpoint(tmp_path)


# ------------------------------------------------ checkpoint metadata as transformers 5 writes it

TEMPLATE_WITH_BOS = ("{{ bos_token }}{% for m in messages %}w10 {{ m['content'] }} {{ eos_token }} {% endfor %}"
                     "{% if add_generation_prompt %}w11{% endif %}")
TEMPLATE_NO_BOS = "{% for m in messages %}w12 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w13{% endif %}"


def _hf_default_template(folder):
    import transformers

    t = transformers.AutoTokenizer.from_pretrained(str(folder)).chat_template
    return t.get("default") if isinstance(t, dict) else t


def test_chat_template_found_where_transformers_5_looks(hf_checkpoint_copy):
    from charbench.engine.tokenizer import HFTokenizer

    folder, _ = hf_checkpoint_copy(TEMPLATE_WITH_BOS)
    assert (folder / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    extra = folder / "additional_chat_templates"

    def ours():
        tok = HFTokenizer(folder, resolve_model_config(str(folder)))
        return tok.chat_template, tok.chat_template_origin

    # 1. chat_template.jinja only (the transformers 5 layout; ignored before)
    assert ours() == (TEMPLATE_WITH_BOS, "chat_template.jinja") and _hf_default_template(folder) == TEMPLATE_WITH_BOS
    # 2. chat_template.jinja beats tokenizer_config.json's chat_template, as in transformers
    tc_path.write_text(json.dumps(tc | {"chat_template": TEMPLATE_NO_BOS}))
    assert ours() == (TEMPLATE_WITH_BOS, "chat_template.jinja") and _hf_default_template(folder) == TEMPLATE_WITH_BOS
    # 3. tokenizer_config.json alone
    (folder / "chat_template.jinja").unlink()
    assert ours() == (TEMPLATE_NO_BOS, "tokenizer_config.json") and _hf_default_template(folder) == TEMPLATE_NO_BOS
    # 4. the legacy list of named templates: the 'default' one
    tc_path.write_text(json.dumps(tc | {"chat_template": [{"name": "tool_use", "template": "T"},
                                                          {"name": "default", "template": TEMPLATE_NO_BOS}]}))
    assert ours() == (TEMPLATE_NO_BOS, "tokenizer_config.json (template 'default')")
    assert _hf_default_template(folder) == TEMPLATE_NO_BOS
    # 5. additional_chat_templates/ beats tokenizer_config.json; without a default none is usable
    extra.mkdir()
    (extra / "tool_use.jinja").write_text("T2")
    assert ours() == (None, "additional_chat_templates/ has named templates ['tool_use'] but no default one")
    assert _hf_default_template(folder) is None
    (extra / "default.jinja").write_text(TEMPLATE_WITH_BOS)
    assert ours() == (TEMPLATE_WITH_BOS, "additional_chat_templates/default.jinja")
    assert _hf_default_template(folder) == TEMPLATE_WITH_BOS
    # 6. nothing anywhere
    import shutil

    shutil.rmtree(extra)
    tc_path.write_text(json.dumps(tc))
    assert ours() == (None, "no chat_template.jinja and no chat_template in tokenizer_config.json")


@pytest.mark.parametrize("template", [TEMPLATE_WITH_BOS, TEMPLATE_NO_BOS])
def test_chat_prompt_ids_equal_apply_chat_template(hf_checkpoint_copy, template):
    import transformers

    from charbench.engine.openai_protocol import ChatMessage
    from charbench.engine.server import chat_prompt_ids
    from charbench.engine.tokenizer import HFTokenizer

    folder, _ = hf_checkpoint_copy(template)
    conv = [{"role": "system", "content": "w3 w4"}, {"role": "user", "content": "w5 w6 w7"}]
    hf_ids = transformers.AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(
        conv, add_generation_prompt=True, tokenize=True, return_dict=False)
    tok = HFTokenizer(folder, resolve_model_config(str(folder)))
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    ours = chat_prompt_ids(tok, [ChatMessage(**m) for m in conv])
    assert ours == hf_ids
    expected = [1, 13, 6, 7, 2, 13, 8, 9, 10, 2, 14] if template == TEMPLATE_WITH_BOS else [15, 6, 7, 15, 8, 9, 10, 16]
    assert ours == expected
    # without the template the fallback one (with its own BOS) gives another prompt
    tok.chat_template = None
    assert chat_prompt_ids(tok, [ChatMessage(**m) for m in conv]) != hf_ids


def test_eos_ids_are_the_union_of_config_generation_config_and_tokenizer(hf_checkpoint_copy):
    from charbench.engine.engine import LLMEngine
    from charbench.engine.weights import config_from_checkpoint

    folder, _ = hf_checkpoint_copy()
    gen = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(gen | {"eos_token_id": [2, 7]}))
    cfg = config_from_checkpoint(folder)
    assert (cfg.eos_token_id, cfg.eos_token_ids) == (2, (2, 7))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(tc | {"eos_token": "w0"}))  # id 3
    eng = LLMEngine(EngineConfig(model=str(folder), kv_cache_gb=0.01))
    try:
        assert eng.tokenizer.eos_token_id == 3
        assert eng.eos_token_ids == frozenset({2, 3, 7})
    finally:
        eng.shutdown()
    # config.json without eos: the first generation_config id becomes the primary one
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("eos_token_id")
    (folder / "config.json").write_text(json.dumps(raw))
    cfg = config_from_checkpoint(folder)
    assert (cfg.eos_token_id, cfg.eos_token_ids) == (2, (2, 7))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(ConfigError, match=r"^--model .*ck: generation_config.json has a malformed eos_token_id "
                                          r"\(token id '</s>' is not an int or a list of ints\)$"):
        config_from_checkpoint(folder)
    (folder / "generation_config.json").write_text("{")
    with pytest.raises(ConfigError, match=r"cannot read generation_config.json"):
        config_from_checkpoint(folder)


def test_greedy_generation_stops_where_hf_generate_stops(hf_checkpoint_copy):
    """An extra EOS listed only in generation_config.json ends generation, as in HF generate."""
    import transformers

    from charbench.engine.api import SamplingParams
    from charbench.engine.engine import LLMEngine

    folder, hf = hf_checkpoint_copy()
    prompt = PROMPTS[0]

    def hf_generate(eos):
        g = transformers.GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=0)
        return hf.generate(torch.tensor([prompt]), generation_config=g)[0, len(prompt):].tolist()

    free = hf_generate([2])
    assert len(free) == 24 and 2 not in free
    stop_at = next(i for i in range(4, 24) if free[i] not in free[:i])
    extra = free[stop_at]
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    (folder / "generation_config.json").write_text(json.dumps(gen | {"eos_token_id": [2, extra]}))
    json_cfg = transformers.GenerationConfig.from_pretrained(str(folder))
    expected = hf_generate(json_cfg.eos_token_id)
    assert expected == free[: stop_at + 1]
    eng = LLMEngine(EngineConfig(model=str(folder), kv_cache_gb=0.01))
    try:
        (out,) = eng.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0))
    finally:
        eng.shutdown()
    assert out.finish_reason == "stop"
    assert out.token_ids == expected
