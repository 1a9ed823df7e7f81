"""The images install the torch the suite runs on (docker itself cannot run here: what is
checked is the files it builds from; the CUDA image checks its torch against its CUDA at build)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_both_images_pin_the_torch_that_bootstrap_installs():
    tested = re.search(r"TORCH_VERSION:-([\d.]+)", (ROOT / "scripts" / "bootstrap.sh").read_text()).group(1)
    cpu = re.search(r"torch==([\d.]+)", (ROOT / "docker" / "cpu.Dockerfile").read_text()).group(1)
    cuda_file = (ROOT / "docker" / "cuda.Dockerfile").read_text()
    cuda = re.search(r"ARG TORCH=([\d.]+)", cuda_file).group(1)
    assert cpu == cuda == tested
    # The wheel index follows the base image's CUDA, and the build fails if torch's CUDA differs.
    assert re.search(r"FROM nvidia/cuda:\$\{CUDA\}-", cuda_file) and "torch.version.cuda == '$cuda'" in cuda_file
