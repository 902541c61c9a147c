"""Calibration texts for int8 quantisation, available offline on every machine.

Post-training quantisation needs a few hundred inputs shaped like what the model will embed:
code, docstrings and comments. The Python standard library's own sources are on every
machine that runs coderag, need no download and are the same for a given Python version, so
the int8 export is reproducible where it is made. Windows of code and the prose of
docstrings are both taken, as chunks and queries are.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

from embeddings.backends.check import PROBE_TEXTS

__all__ = ["calibration_texts"]

MODULES = (
    "argparse.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py",
    "http/client.py", "email/message.py", "collections/__init__.py", "functools.py",
    "pathlib.py", "subprocess.py", "tarfile.py", "urllib/parse.py", "csv.py",
    "dataclasses.py", "configparser.py", "shutil.py", "threading.py", "typing.py",
)  # fmt: skip
"""Widely different code (parsers, networking, data structures), all pure Python."""


def calibration_texts(limit: int = 300, lines: int = 30) -> list[str]:
    """Up to ``limit`` texts: 30-line code windows and docstrings, interleaved."""
    root = Path(sysconfig.get_paths()["stdlib"])
    code: list[str] = []
    prose: list[str] = []
    for name in MODULES:
        path = root / name
        try:
            source = path.read_text(encoding="utf-8")
        except OSError:  # a trimmed Python install: use what is there
            continue
        rows = source.splitlines()
        code += ["\n".join(rows[i : i + lines]) for i in range(0, len(rows), lines * 4)]
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    prose.append(doc.split("\n\n")[0])
    mixed = list(PROBE_TEXTS)
    for i in range(max(len(code), len(prose))):
        mixed += [t for t in (code[i : i + 1] + prose[i : i + 1]) if t.strip()]
    return mixed[:limit]
