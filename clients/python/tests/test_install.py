"""`pip install ./clients/python` in a fresh virtual environment: the package installs with its one
required dependency and imports (PyPI is one of the registries every machine here reaches)."""
import subprocess
import sys
import venv

from conftest import ROOT


def test_pip_install_in_a_fresh_venv(tmp_path):
    venv.EnvBuilder(with_pip=True).create(tmp_path / "v")
    py = str(tmp_path / "v" / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "clients" / "python")],
                   check=True, timeout=600)
    out = subprocess.run([py, "-c", "import seed_sweeps, pathlib; print(seed_sweeps.API_VERSION); "
                          "print((pathlib.Path(seed_sweeps.__file__).parent / 'py.typed').exists())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1.1", "True"]
    assert sys.version_info >= (3, 9)
