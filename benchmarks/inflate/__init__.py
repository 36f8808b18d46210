"""Inflate a small Qwen3 target (and its DSpark drafter) to a realistic serving shape without changing its function.

Why: pycode-23m (hidden 512, 6 layers) is launch-bound on a GPU, so its speculation economics are unlike a real
model's. The inflated checkpoint has the shapes of e.g. Qwen3-4B (hidden 2560, 36 layers, 32/8 heads × 128,
MLP 9728) and the greedy outputs of the small model, so acceptance carries over while the cost becomes realistic.

    python -m benchmarks.inflate --target SMALL --out BIG --shape qwen3-4b [--draft D --draft-out D_BIG] [--check 3]

Notation: small d, L, nh, nkv, hd, I, eps; big D, L', NH, NKV, HD, I'; s = HD/hd, g = nh/nkv, G = NH/NKV.
The construction is exact in real arithmetic (only the bf16 rounding of the rescaled norm weights and a q/k-norm
eps shift of < 1e-6 relative, see 3., differ):
1. Residual stream x' = [x, 0]: its padded coordinates stay exactly zero, because every weight row writing into
   them is zero on every input that can be nonzero. The embedding (tied to the LM head) is [E, 0].
2. RMSNorm over D sees mean(x'^2) = (d/D)·mean(x^2). With rms_norm_eps' = eps·d/D and w' = w·sqrt(d/D):
   x'·w'/sqrt((d/D)(ms + eps)) = [x·w/sqrt(ms + eps), 0] exactly (hidden, drafter, final norms).
3. head_dim: HD = s·hd, kept realistic (128). Original head dim i goes to position s·i (i < hd/2) or
   HD/2 + s·(i - hd/2) (i >= hd/2): Qwen3's rotate_half pair (i, i + hd/2) lands on the pair (s·i, s·i + HD/2),
   whose frequency θ^(-2(s·i)/HD) equals θ^(-2i/hd) (the same float: both exponents are correctly rounded quotients
   of one rational). The other positions are zero in q and k of original heads. q_norm/k_norm then see
   ms/s and the eps' of 2., i.e. they output sqrt(s)·q/sqrt(ms + s·eps'); the q_norm weight w_q/sqrt(s) removes
   one sqrt(s) and the softmax scale HD^-1/2 = hd^-1/2/sqrt(s) the other (the k side). The q/k norms' effective
   eps becomes s·eps·d/D (0.4·eps for qwen3-4b): the rms changes by <= |1 - s·d/D|·eps/(2·ms_q) relative,
   6e-7 for pycode-23m (ms_q >= 0.5 measured). Not corrected on purpose: the correction (q/k_proj times
   sqrt(s·d/D)) would round every q/k weight in bf16, a far larger change.
4. Original kv head k -> new kv head k; q head k·g + r -> k·G + r (so GQA groups stay intact). Extra q heads
   in original groups read real V: their o_proj columns are zero. Extra kv heads get V = 0 (their q/k are noise).
5. MLP: neurons [I, I') have noise gate rows and up rows that are zero on live inputs, so silu(gate)·up = 0.
6. Layers: original layer i -> new layer i·L'//L; the layers between are identities: their input norms, q, k,
   gate and half of v/up are realistic noise (nonzero activations), the other half of v/up is zero on live
   inputs, and o_proj/down_proj are zero exactly on the columns whose activations are nonzero.
   target_layer_ids of a drafter are remapped by the same map (-1 stays -1).
7. Noise: weights are never padded with zeros where a zero would not be needed. Every entry that multiplies an
   exact zero (padded inputs) or only feeds an output nobody reads is N(0, std of the original tensor), so the
   kernels read realistic data and the function is still exactly preserved (0·finite = 0, no tiny-noise
   approximation anywhere). Exact zeros remain only where a nonzero input meets a row whose output must be
   exact, plus the embedding's padded columns (tied embedding: the lookup output must be zero there).

Drafters are inflated with the same maps; the kind is read from config.json `architectures`:
- DSpark (`Qwen3DSparkModel`, DeepSpec layout, deepspec-format.md §2-3) and DFlash (`DFlashDraftModel`, vLLM's
  native `dflash` layout: the same tensors without heads): fc takes m padded target features, its layers/norms
  follow 2.-6., Markov/confidence heads get noise columns for the padded part of h.
- EAGLE-3 (`LlamaForCausalLMEagle3`, vLLM's native `eagle3` layout): fc [d, 3d] -> [D, 3D] like DSpark's fc; the
  midlayer's q/k/v read [input_layernorm(emb) ; hidden_norm(g)] of width 2D, whose live coordinates are [0, d) and
  [D, D + d); heads, GQA and MLP follow 3.-5. The midlayer has no q/k norm, so the sqrt(s) of the softmax scale
  (HD^-1/2 = hd^-1/2/sqrt(s)) goes into the q_proj rows (exact in real arithmetic; in bf16 it is one rounding of
  each live q weight, relative <= 2^-9, unless s is a power of 4), and q is noise everywhere off the source block
  (k is exactly zero off the mapped positions of original heads). Its own lm_head gets noise columns (it reads h);
  d2t/t2d (a reduced draft vocabulary), when present, are copied.
In every kind, target_layer_ids (and vLLM's dflash_config / eagle_aux_hidden_state_layer_ids spellings) are
remapped by the target's layer map of 6.
Output: HF folders (config.json, model.safetensors or shards + index, tokenizer files, generation_config.json,
inflate_meta.json) written layer by layer, so a 4B-shaped target needs no more than one layer in device memory.

Modules: `plan` (shapes and the layer map), `maps` (where source coordinates sit in the big tensors), `layers`
(norms, linears, decoder layers), `shards` (safetensors writer), `target`, `drafters` (DSpark / DFlash) and `eagle3`,
`checks` (small vs inflated, run by transformers and vllm_dspark), `cli`.
"""
