"""Policies that act on the prompt environments through one protocol."""

__all__: list[str] = []
