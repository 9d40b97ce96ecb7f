#!/usr/bin/env python3
"""Local build of the noarch kernel, laid out as the kernel-builder lays it out.

Writes ``build/torch-<backend>/``: the package files flat, a rendered ``_ops.py`` whose op namespace
is ``_finegrained_fp8_<backend>_<first 7 hex of the git tree id>`` (``_dirty`` appended when the
work tree has uncommitted changes), and ``metadata.json``. ``--dev`` also writes the git-ignored
``torch-ext/finegrained_fp8/_ops.py`` so the package can be imported straight from ``torch-ext``.

    python scripts/build.py                  # the backend this machine has: build/torch-cuda on a CUDA GPU,
                                             # build/torch-cpu (Triton's interpreter) on a CPU machine
    python scripts/build.py --backend cuda   # a named backend (cuda, rocm, xpu, cpu)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "finegrained_fp8"
SOURCE = ROOT / "torch-ext" / PACKAGE
BACKENDS = ("cuda", "rocm", "xpu", "cpu")

OPS_TEMPLATE = '''import torch

ops = torch.ops.{namespace}


def add_op_namespace_prefix(op_name: str) -> str:
    """Prefix op by namespace."""
    return f"{namespace}::{{op_name}}"
'''


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def tree_hash() -> str:
    """First 7 hex of HEAD's tree id, with ``_dirty`` when the work tree differs from it."""
    tree = _git("rev-parse", "HEAD^{tree}")
    if tree is None:
        return "0000000_dirty"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=normal"))
    return tree[:7] + ("_dirty" if dirty else "")


def op_namespace(backend: str, tree: str) -> str:
    return f"_{PACKAGE}_{backend}_{tree}"


def render_ops(namespace: str) -> str:
    return OPS_TEMPLATE.format(namespace=namespace)


def package_files() -> list[Path]:
    return sorted(p for p in SOURCE.glob("*.py") if p.name != "_ops.py")


def build(backend: str, out_dir: Path, tree: str) -> Path:
    """Write one variant directory and return it."""
    config = tomllib.loads((ROOT / "build.toml").read_text())["general"]
    namespace = op_namespace(backend, tree)
    variant = out_dir / f"torch-{backend}"
    if variant.exists():
        shutil.rmtree(variant)
    variant.mkdir(parents=True)
    for f in package_files():
        shutil.copy2(f, variant / f.name)
    (variant / "_ops.py").write_text(render_ops(namespace))
    metadata = {
        "name": config["name"],
        "id": namespace,
        "version": config["version"],
        "license": config["license"],
        "python-depends": [],
        "backend": {"type": backend},
    }
    (variant / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return variant


def local_backend() -> str:
    """The backend of the machine's torch: rocm, cuda or xpu where it has such a GPU, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "rocm" if torch.version.hip else "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    return "cpu"


def write_dev_ops(backend: str, tree: str) -> Path:
    path = SOURCE / "_ops.py"
    path.write_text(render_ops(op_namespace(backend, tree)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backend", choices=BACKENDS, action="append", help="variant(s) to build (default: this machine's)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output directory (default: build/)")
    parser.add_argument("--tree-id", help="override the 7-hex tree id (tests use it to build distinct namespaces)")
    parser.add_argument("--dev", action="store_true", help="also write torch-ext/finegrained_fp8/_ops.py")
    args = parser.parse_args()
    tree = args.tree_id or tree_hash()
    backends = args.backend or [local_backend()]
    for backend in backends:
        print(build(backend, args.out, tree))
    if args.dev:
        print(write_dev_ops(backends[0], tree))


if __name__ == "__main__":
    main()
