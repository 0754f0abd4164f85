"""selfimprove-rl: self-improving LLM calls.

Optimize a traced LLM call's system prompt and model as a reinforcement-learning problem
over an offline replay of its logged calls. Importing this package is cheap: heavy
dependencies (Phoenix, sentence-transformers, torch) load on first use.
"""

from selfimprove_rl.checkpoint import (
    Action,
    Checkpoint,
    EvalConstants,
    Provenance,
    Sample,
    Splits,
)
from selfimprove_rl.errors import (
    BackendUnavailableError,
    InvalidEdit,
    ProgramError,
    SelfImproveError,
)
from selfimprove_rl.program import MessageTemplate, NodeMatch, Program, ProgramNode
from selfimprove_rl.program_data import load_pipeline, load_pipeline_file
from selfimprove_rl.program_state import (
    NodeEdit,
    ProgramState,
    apply_program,
    parse_program_directives,
)
from selfimprove_rl.prompt import (
    AddLine,
    Block,
    DeleteLine,
    Edit,
    EditLine,
    NoOp,
    PromptState,
    ReplaceBlock,
    SetModel,
    apply,
    diff,
    parse_directives,
)

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AddLine",
    "BackendUnavailableError",
    "Block",
    "Checkpoint",
    "DeleteLine",
    "Edit",
    "EditLine",
    "EvalConstants",
    "InvalidEdit",
    "MessageTemplate",
    "NoOp",
    "NodeEdit",
    "NodeMatch",
    "Program",
    "ProgramError",
    "ProgramNode",
    "ProgramState",
    "PromptState",
    "Provenance",
    "ReplaceBlock",
    "Sample",
    "SelfImproveError",
    "SetModel",
    "Splits",
    "__version__",
    "apply",
    "apply_program",
    "diff",
    "load_pipeline",
    "load_pipeline_file",
    "parse_directives",
    "parse_program_directives",
]
