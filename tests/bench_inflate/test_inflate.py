"""benchmarks.inflate: the inflated target (and drafter) must compute what the small one computes.

The oracle is always the small model itself run by transformers (or by vllm_dspark's drafter), never numbers
produced by the inflation code. Shapes are kept small (hidden 768, 9 layers, 15/5 heads × 128, MLP 2304) so
the whole module runs in well under a minute on 2 CPU cores; the real qwen3-4b shape is checked by arithmetic only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.inflate.checks import draft_on_prompt, load_drafter_with_kind
from benchmarks.inflate.drafters import inflate_drafter
from benchmarks.inflate.plan import SHAPES, Shape, count_params, make_plan
from benchmarks.inflate.target import inflate_target, inflated_target_config, target_tensor_shapes
from vllm_dspark.training.baselines import drafter_kind_of_config

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("DSPARK_TEST_TARGET", REPO.parent / "shared" / "models" / "pycode-23m"))

# Odd on purpose: 15 heads over 5 kv heads gives both extra q heads inside original GQA groups (G=3 > g=2) and
# a whole extra kv group; head_dim 64 -> 128 exercises the RoPE re-embedding; 9 layers put identities between.
SMALL_SHAPE = Shape(hidden_size=768, num_hidden_layers=9, num_attention_heads=15, num_key_value_heads=5,
                    head_dim=128, intermediate_size=2304)
NEW_TOKENS = 32
PROMPTS = 3
PROMPT_TOKENS = 96


def needs_target(test):
    """Inflates the real pycode-23m (seconds per test on 2 cores): slow, and skipped without the model."""
    skip = pytest.mark.skipif(not (TARGET / "config.json").is_file(), reason=f"no target model at {TARGET}")
    return pytest.mark.slow(skip(test))


def pycode_config() -> dict:
    """pycode-23m's config (from disk when present; the shape tests must not need the weights)."""
    if (TARGET / "config.json").is_file():
        return json.loads((TARGET / "config.json").read_text())
    return {"model_type": "qwen3", "hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 1536, "vocab_size": 8192,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "layer_types": ["full_attention"] * 6}


# ------------------------------------------------------------------------------------------------ shape arithmetic
@pytest.mark.parametrize(
    "name, non_embedding_params",
    # Published "Number of Parameters (Non-Embedding)" of Qwen3-4B / Qwen3-8B (model cards): 3.6B / 6.95B.
    [("qwen3-4b", 3.6e9), ("qwen3-8b", 6.95e9)],
)
def test_preset_config_and_shapes_without_weights(name, non_embedding_params):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    src = pycode_config()
    plan = make_plan(src, SHAPES[name])
    cfg = inflated_target_config(src, plan, torch.bfloat16)
    shapes = target_tensor_shapes(src, plan)
    want = {"qwen3-4b": (2560, 36, 32, 8, 128, 9728), "qwen3-8b": (4096, 36, 32, 8, 128, 12288)}[name]
    got = tuple(cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                 "head_dim", "intermediate_size"))
    assert got == want
    assert cfg["vocab_size"] == 8192 and cfg["tie_word_embeddings"] is True
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and len(cfg["layer_types"]) == 36
    assert cfg["rms_norm_eps"] == pytest.approx(1e-6 * 512 / want[0], rel=1e-12)
    assert plan.layer_map == [0, 6, 12, 18, 24, 30]  # 6 source layers spread over 36

    # transformers builds exactly these tensors for this config (meta device: nothing is allocated).
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in cfg.items() if k != "dtype"}))
    hf = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(hf) - set(shapes) <= {"lm_head.weight"}  # tied: transformers' checkpoints omit it too
    assert {k: hf[k] for k in shapes} == shapes
    non_embedding = count_params(shapes) - 8192 * want[0]
    assert non_embedding == pytest.approx(non_embedding_params, rel=0.01)


def test_rope_frequencies_of_the_reembedded_pairs_are_bit_equal():
    """The construction relies on inv_freq(HD)[s·j] == inv_freq(hd)[j] exactly, in transformers' formula."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    def inv_freq(head_dim):
        cfg = Qwen3Config(hidden_size=512, num_attention_heads=8, head_dim=head_dim,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        return Qwen3RotaryEmbedding(cfg).inv_freq

    small, big = inv_freq(64), inv_freq(128)
    assert torch.equal(big[::2], small)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(hidden_size=256), "hidden_size"),
        (dict(head_dim=96), "head_dim"),
        (dict(num_attention_heads=8, num_key_value_heads=8), "group size"),
        (dict(num_hidden_layers=4), "num_hidden_layers"),
        (dict(num_attention_heads=30, num_key_value_heads=8), "num_attention_heads"),
    ],
)
def test_bad_shapes_are_refused_naming_the_field(change, field):
    dst = Shape(**{**SHAPES["qwen3-4b"].__dict__, **change})
    with pytest.raises(ValueError, match=field):
        make_plan(pycode_config(), dst)


# ------------------------------------------------------------------------------------------------ real weights
@pytest.fixture(scope="module")
def inflated(tmp_path_factory):
    out = tmp_path_factory.mktemp("inflated")
    summary = inflate_target(TARGET, out, SMALL_SHAPE, dtype=torch.float32, device="cpu", seed=0)
    return out, summary


@pytest.fixture(scope="module")
def models(inflated):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = inflated
    tok = AutoTokenizer.from_pretrained(out)  # the copied tokenizer files must load
    small = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.float32).eval()
    big = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    lines = (TARGET / "eval_prompts.jsonl").read_text().splitlines()[:PROMPTS]
    prompts = [tok(json.loads(line)["prompt"], return_tensors="pt").input_ids[:, :PROMPT_TOKENS] for line in lines]
    return small, big, prompts


@needs_target
def test_inflated_target_weights_are_dense_and_finite(inflated):
    from safetensors.torch import load_file

    out, summary = inflated
    state = load_file(str(out / "model.safetensors"))
    assert summary["params_after"] == sum(v.numel() for v in state.values())
    for key, w in state.items():
        assert torch.isfinite(w).all(), key
        nonzero = float((w != 0).float().mean())
        if "embed_tokens" in key:  # tied: the embedding's padded columns must be exactly zero
            assert nonzero == pytest.approx(512 / 768, abs=0.01), key
        else:  # noise fills what does not need to be zero: kernels never read mostly-zero weights
            assert nonzero > 0.45, (key, nonzero)


@needs_target
@torch.no_grad()
def test_inflated_target_keeps_greedy_tokens_and_logits(models, inflated):
    small, big, prompts = models
    kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True,
              output_logits=True, pad_token_id=4)
    max_diff = 0.0
    for ids in prompts:
        a, b = small.generate(ids, **kw), big.generate(ids, **kw)
        assert torch.equal(a.sequences, b.sequences)
        assert a.sequences.shape[1] - ids.shape[1] == NEW_TOKENS
        diff = max(float((la - lb).abs().max()) for la, lb in zip(a.logits, b.logits))
        max_diff = max(max_diff, diff)
    print(f"\nfp32 max |logit diff| inflated vs source over {PROMPTS}x{NEW_TOKENS} greedy steps: {max_diff:.3g}")
    assert max_diff < 1e-3  # logits are O(10); fp32 reductions of different lengths differ by ~1e-5


@needs_target
@torch.no_grad()
def test_residual_stream_is_source_stream_padded_with_exact_zeros(models, inflated):
    small, big, prompts = models
    _, summary = inflated
    layer_map = summary["layer_map"]
    hs_small = small(prompts[0], output_hidden_states=True).hidden_states
    hs_big = big(prompts[0], output_hidden_states=True).hidden_states
    for k, h in enumerate(hs_big[:-1]):  # the last entry is final-normed by transformers
        assert torch.equal(h[..., 512:], torch.zeros_like(h[..., 512:])), f"hidden_states[{k}] padded part"
    # output of source layer i == output of new layer layer_map[i] (hidden_states index + 1), embeddings equal
    assert torch.equal(hs_big[0][..., :512], hs_small[0])
    for i, j in enumerate(layer_map[:-1]):
        torch.testing.assert_close(hs_big[j + 1][..., :512], hs_small[i + 1], rtol=1e-4, atol=1e-4)
        # the identity layers after j leave the stream untouched (exactly: their updates are exact zeros)
        for k in range(j + 1, layer_map[i + 1]):
            assert torch.equal(hs_big[k + 1], hs_big[j + 1])


# ------------------------------------------------------------------------------------------------ drafter
def make_drafter(directory: Path, head_type: str, rank: int) -> dict:
    """A random DeepSpec-layout drafter of pycode-23m (vllm_dspark's model), norms and biases perturbed."""
    from vllm_dspark.checkpoint import save_drafter
    from vllm_dspark.config import DSparkConfig
    from vllm_dspark.model import DSparkDrafter

    cfg = DSparkConfig.from_target(
        pycode_config(), mask_token_id=3, target_layer_ids=[1, 2, 4], num_draft_layers=2, markov_rank=rank,
        markov_head_type=head_type, enable_confidence_head=True, confidence_head_with_markov=rank > 0,
    )
    torch.manual_seed(1)
    drafter = DSparkDrafter(cfg)
    make_informative(drafter)
    save_drafter(drafter, directory, dtype=torch.float32)
    return cfg.to_dict()


@torch.no_grad()
def make_informative(drafter: torch.nn.Module) -> None:
    """Perturb norms and biases (they start at 1 / 0) and share the target's real embedding as embedding / head."""
    from safetensors.torch import load_file

    embed = load_file(str(TARGET / "model.safetensors"))["model.embed_tokens.weight"].float()
    for p in drafter.parameters():
        if p.ndim == 1:
            p.add_(0.2 * torch.randn_like(p))
    drafter.embed_tokens.weight.copy_(embed)
    drafter.lm_head.weight.copy_(embed)


def make_native_drafter(directory: Path, kind: str) -> None:
    """A random drafter of pycode-23m in vLLM's native `dflash` or `eagle3` layout, written by the training code."""
    from vllm_dspark.config import DSparkConfig
    from vllm_dspark.training.dflash import DFlashDrafter, save_dflash
    from vllm_dspark.training.eagle3 import Eagle3Config, Eagle3Drafter, save_eagle3

    torch.manual_seed(2)
    if kind == "dflash":
        cfg = DSparkConfig.from_target(pycode_config(), mask_token_id=3, target_layer_ids=[1, 2, 4],
                                       num_draft_layers=2, markov_rank=0, enable_confidence_head=False)
        drafter = DFlashDrafter(cfg)
        make_informative(drafter)
        save_dflash(drafter, directory, dtype=torch.float32)
    else:
        drafter = Eagle3Drafter(Eagle3Config.from_target(pycode_config(), target_layer_ids=[1, 2, 4]))
        make_informative(drafter)
        save_eagle3(drafter, directory, dtype=torch.float32)


@needs_target
@pytest.mark.parametrize("head_type, rank", [("vanilla", 32), ("gated", 32), ("rnn", 32), ("vanilla", 0)])
@torch.no_grad()
def test_inflated_drafter_keeps_drafts_and_confidences(tmp_path, models, inflated, head_type, rank):
    pytest.importorskip("vllm_dspark.model", reason="vllm_dspark.model (the drafter oracle) is needed")
    from vllm_dspark.checkpoint import load_drafter
    from vllm_dspark.model import target_features

    small, big, prompts = models
    out, _ = inflated
    make_drafter(tmp_path / "draft", head_type, rank)
    inflate_drafter(tmp_path / "draft", tmp_path / "draft_big", pycode_config(), SMALL_SHAPE,
                    num_layers=3, dtype=torch.float32, device="cpu")
    cfg_big = json.loads((tmp_path / "draft_big" / "config.json").read_text())
    # source layers [1, 2, 4] sit at i·9//6 = [1, 3, 6] in the 9-layer target; one identity draft layer added
    assert cfg_big["target_layer_ids"] == [1, 3, 6] and cfg_big["num_target_layers"] == 9
    assert cfg_big["num_hidden_layers"] == 3 and cfg_big["hidden_size"] == 768

    results = []
    for target, d_dir in ((small, tmp_path / "draft"), (big, tmp_path / "draft_big")):
        drafter = load_drafter(d_dir, dtype=torch.float32)
        blocks = []
        for ids in prompts[:2]:
            feats = target_features(target(ids, output_hidden_states=True).hidden_states,
                                    drafter.config.target_layer_ids)[:, :-1]  # [1, C, m·H]
            c = feats.shape[1]
            blocks.append(drafter.draft(feats, torch.arange(c)[None], ids[:, -1], torch.tensor([c])))
        results.append(blocks)
    for a, b in zip(*results):
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-3)
        torch.testing.assert_close(b.confidence_logits, a.confidence_logits, rtol=0, atol=1e-4)
    diff = max(float((a.logits - b.logits).abs().max()) for a, b in zip(*results))
    print(f"\ndrafter ({head_type}, r={rank}) fp32 max |corrected logit diff|: {diff:.3g}")


@needs_target
@pytest.mark.parametrize("kind, stripped", [("dflash", False), ("eagle3", False), ("eagle3", True)])
@torch.no_grad()
def test_inflated_native_drafter_keeps_drafts(tmp_path, models, inflated, kind, stripped):
    """DFlash / EAGLE-3 drafters (vLLM layouts): the inflated drafter on the inflated target's features drafts
    what the small one drafts on the small target's, run by the training package's own drafter classes. A stripped
    EAGLE-3 drafter (no embedding / LM head: shared_weights.py strip) inflates too and, given each target's own,
    as vLLM does, still drafts the same."""
    from safetensors.torch import load_file, save_file

    from vllm_dspark.training.eagle3 import load_eagle3

    small, big, prompts = models
    make_native_drafter(tmp_path / "draft", kind)
    if stripped:
        path = tmp_path / "draft" / "model.safetensors"
        state = {k: v for k, v in load_file(str(path)).items() if k not in ("embed_tokens.weight", "lm_head.weight")}
        save_file(state, str(path))
    summary = inflate_drafter(tmp_path / "draft", tmp_path / "draft_big", pycode_config(), SMALL_SHAPE,
                              dtype=torch.float32, device="cpu")
    assert summary["kind"] == kind
    cfg_big = json.loads((tmp_path / "draft_big" / "config.json").read_text())
    assert cfg_big["target_layer_ids"] == [1, 3, 6] and cfg_big["num_target_layers"] == 9  # i·9//6
    assert cfg_big["hidden_size"] == 768 and cfg_big["head_dim"] == 128
    if kind == "eagle3":  # vLLM's spelling: layer inputs, id + 1, in both places vLLM reads
        assert cfg_big["eagle_aux_hidden_state_layer_ids"] == [2, 4, 7]
        assert cfg_big["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 4, 7]
        assert cfg_big["target_hidden_size"] == 768 and cfg_big["num_hidden_layers"] == 1
    else:
        assert cfg_big["dflash_config"]["target_layer_ids"] == [1, 3, 6]

    results = []
    for target, d_dir in ((small, tmp_path / "draft"), (big, tmp_path / "draft_big")):
        if stripped:  # the target's embedding and LM head, as vLLM shares them with a drafter that has none
            assert "embed_tokens.weight" not in load_file(str(next(d_dir.glob("*.safetensors"))))
            drafter = load_eagle3(d_dir, target, dtype=torch.float32)
            results.append([draft_on_prompt(target, kind, drafter, ids) for ids in prompts[:2]])
            continue
        # vllm_dspark.training's DFlashDrafter / Eagle3Drafter, loaded by their load_dflash / load_eagle3
        loaded_kind, drafter = load_drafter_with_kind(d_dir, torch.float32, "cpu")
        expected_class = {"dflash": "DFlashDrafter", "eagle3": "Eagle3Drafter"}[kind]
        assert loaded_kind == kind and type(drafter).__name__ == expected_class
        results.append([draft_on_prompt(target, kind, drafter, ids) for ids in prompts[:2]])
    for a, b in zip(*results):
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-3)
    diff = max(float((a.logits - b.logits).abs().max()) for a, b in zip(*results))
    print(f"\n{kind} fp32 max |draft logit diff| inflated vs source: {diff:.3g}")


def test_unknown_drafter_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="architectures"):
        drafter_kind_of_config({"architectures": ["Qwen3ForCausalLM"]}, strict=True)
    assert drafter_kind_of_config({"architectures": ["DFlashDraftModel"]}, strict=True) == "dflash"
    (tmp_path / "config.json").write_text(json.dumps({**pycode_config(), "architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(ValueError, match="architectures"):  # before any weight is read
        inflate_drafter(tmp_path, tmp_path / "out", pycode_config(), SMALL_SHAPE, device="cpu")


@needs_target
@torch.no_grad()
def test_untied_head_and_unchanged_head_dim(tmp_path):
    """Other branches: an untied LM head (noise columns) and head_dim kept at 64 (s = 1), extra kv groups only."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    src = tmp_path / "untied"
    src.mkdir()
    cfg = {**pycode_config(), "tie_word_embeddings": False}
    (src / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(TARGET / "model.safetensors"))
    torch.manual_seed(0)
    embed = state["model.embed_tokens.weight"]
    state["lm_head.weight"] = embed + 0.02 * torch.randn_like(embed)
    save_file(state, str(src / "model.safetensors"))
    shape = Shape(hidden_size=640, num_hidden_layers=7, num_attention_heads=12, num_key_value_heads=6,
                  head_dim=64, intermediate_size=1600)
    inflate_target(src, tmp_path / "big", shape, dtype=torch.float32, device="cpu")
    small = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    big = AutoModelForCausalLM.from_pretrained(tmp_path / "big", dtype=torch.float32).eval()
    assert not big.config.tie_word_embeddings
    ids = torch.randint(5, 8192, (2, 48), generator=torch.Generator().manual_seed(0))
    a, b = small(ids).logits, big(ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(b, a, rtol=0, atol=1e-3)
