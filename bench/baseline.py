"""The exporter as it was before a change, for before/after figures from one run on one machine.

The tree of a git revision (`exporter/` and `bench/`) is unpacked from the repository
(`git archive`) into a temporary directory and run with this checkout's interpreter and
packages: no copy of old code is kept in the tree. By default the revision is the last one
with the home-made HTTP layer (`exporter/bem/transport.py` on httpcore and asyncio streams,
and `exporter/bem/exchange.py`), which `httpx.AsyncClient` replaced.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_LAYER = "exporter/bem/transport.py"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def old_layer_revision() -> str:
    """The parent of the commit that deleted the home-made HTTP layer."""
    deleted = _git("rev-list", "-1", "HEAD", "--", OLD_LAYER)
    if not deleted:
        raise SystemExit(f"no commit in this history touches {OLD_LAYER}: pass --old-layer REV")
    return _git("rev-parse", "--short", f"{deleted}^")


@contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """`revision`'s exporter/ and bench/ in a temporary directory, removed afterwards."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "exporter", "bench"], cwd=ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {revision}: {archive.stderr.decode(errors='replace').strip()}")
    with tempfile.TemporaryDirectory(prefix="bem-bench-baseline-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)
