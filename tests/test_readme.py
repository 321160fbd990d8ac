"""The README's Python examples run as written (on real MNIST, in a scratch folder)."""

import re
from pathlib import Path

import pytest

from .test_cli import DATA_DIR, needs_mnist

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@needs_mnist
@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readme_example_runs(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LPNTK_DATA_DIR", DATA_DIR)
    exec(compile(BLOCKS[block], f"README.md python block {block + 1}", "exec"), {})
    if "most.values.shape" in BLOCKS[block]:
        assert "torch.Size([2000, 10]) torch.Size([2000, 10])" in capsys.readouterr().out
