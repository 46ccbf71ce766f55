"""What this machine can offer as a trainer, measured without importing torch (it costs
~200 MB and 1-2 s; the training worker imports it in its own process)."""

from __future__ import annotations

import os
import shutil
import subprocess

import psutil

from fedswarm.protocol.messages import Capabilities


def detect_capabilities(allow_gpu: bool = True) -> Capabilities:
    """CPU cores, RAM and (via ``nvidia-smi`` when present) the first GPU."""
    gpu_name, gpu_mem = None, None
    if allow_gpu and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip().splitlines()
            if out:
                name, mem = out[0].rsplit(",", 1)
                gpu_name, gpu_mem = name.strip()[:200], int(float(mem))
        except (subprocess.SubprocessError, ValueError, OSError):
            pass
    return Capabilities(
        cpu_cores=os.cpu_count() or 1,
        ram_mb=int(psutil.virtual_memory().total // (1 << 20)),
        gpu_name=gpu_name,
        gpu_memory_mb=gpu_mem,
        device="cuda" if gpu_name else "cpu",
    )
