"""The shipped experiment configs, installed as package data (``experiments/configs/*.toml``).

Nothing to import here: ``selfimprove-rl run coffee_sports`` and ``selfimprove-rl configs``
find the files through :mod:`selfimprove_rl.config_files`, from any folder.
"""
