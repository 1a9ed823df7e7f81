"""The dependency rule (docs/architecture.md): import-linter contracts in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hatchery", "optimizer_svc", "inference_svc", "reward_svc")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the packages under root (they come first on the path)."""
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)


def test_every_layer_imports_only_the_layers_below_it():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_core_module_that_imports_a_service_fails_the_check(tmp_path):
    """The check bites: the same tree with one core module importing a service is refused, by name."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    tasks = tmp_path / "hatchery" / "core" / "tasks.py"
    tasks.write_text(tasks.read_text() + "\nimport reward_svc.graders  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "hatchery.core.tasks -> reward_svc.graders" in result.stdout, result.stdout


def test_services_load_no_plotting_or_benchmark_module_at_start_up():
    code = ("import sys, hatchery.cli, optimizer_svc.server, inference_svc.server, reward_svc.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'trl') "
            "or m.startswith('hatchery.bench')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"
