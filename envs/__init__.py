"""Gymnasium environments over prompt versions (PromptEnv and its wrappers)."""

__all__: list[str] = []
