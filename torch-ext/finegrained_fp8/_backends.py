"""Which GEMM serves a call: the Hopper Gluon kernel (``_wgmma``) or the plain-Triton kernels.

The Gluon kernel is used on sm_90 only (``DeviceFacts.hopper_wgmma``), and only under a Triton whose
Gluon API it is written for and compiled against in CI (``GLUON_TRITONS``). Gluon is experimental and
moves between releases: under any other Triton, or where its import fails, every call takes the
plain-Triton kernels, which compute the same numbers.
"""

from __future__ import annotations

import triton

# (major, minor) releases of Triton whose Gluon the Hopper kernel compiles under (tests/compile_targets.py).
GLUON_TRITONS = ((3, 6), (3, 7), (3, 8), (3, 9))


def _triton_release() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


hopper_gemm = None
if _triton_release() in GLUON_TRITONS:
    try:
        from . import _wgmma as hopper_gemm
    except ImportError:  # a build of Triton without Gluon's Hopper API
        hopper_gemm = None
