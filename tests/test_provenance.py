"""Committed notebooks carry a current provenance stamp; the stamp machinery detects staleness."""
import nbformat
import pytest

from dpbook import execute, provenance

TOC_NOTEBOOKS = provenance.toc_notebooks()


def test_the_toc_lists_notebooks():
    assert any(p.name == "01_dp_primer.ipynb" for p in TOC_NOTEBOOKS)


@pytest.mark.parametrize("path", TOC_NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_stamp_is_current(path):
    problems = provenance.problems(path)
    assert not problems, (f"{path}: " + "; ".join(problems)
                          + f"\nre-run:  python -m dpbook.execute --profile laptop {path}")


def _tiny_notebook(path, source):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# tiny"),
                                         nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_execute_stamps_and_staleness_is_detected(tmp_path):
    path = tmp_path / "tiny.ipynb"
    _tiny_notebook(path, "import dpbook, os\nfrom dpbook import privacy\n"
                         "print(os.environ['DPBOOK_PROFILE'], privacy.analytic_gaussian_epsilon(sigma=1.0, delta=1e-5))")
    assert "no provenance stamp" in provenance.problems(path)[0]
    stamp = execute.execute(path, profile="laptop")
    nb = nbformat.read(path, as_version=4)
    assert len(nb.cells) == 2  # the probe cell is gone
    assert nb.cells[1].outputs[0].text.startswith("laptop 4.37")
    assert stamp["profile"] == "laptop" and stamp["seconds"] > 0 and stamp["device"]
    imported = {f.split("/")[1].removesuffix(".py") for f in stamp["package_files"]}  # module or subpackage
    assert "privacy" in imported and "data" not in imported
    assert provenance.problems(path) == []

    nb.cells[1].source += "\n# edited"
    nbformat.write(nb, path)
    assert any("code cells changed" in p for p in provenance.problems(path))

    nb.cells[1].source = nb.cells[1].source.replace("\n# edited", "")
    nb.metadata["dpbook"]["package_hash"] = "0" * 64
    nbformat.write(nb, path)
    assert any("dpbook source" in p for p in provenance.problems(path))

    nb.metadata["dpbook"]["package_hash"] = stamp["package_hash"]
    nb.metadata["dpbook"]["profile"] = "smoke"
    nbformat.write(nb, path)
    assert any("smoke" in p for p in provenance.problems(path))


def test_presets_are_hashed_one_entry_at_a_time(tmp_path):
    path = tmp_path / "uses_a_preset.ipynb"
    _tiny_notebook(path, "import dpbook\nprint(dpbook.settings('dp_primer').delta)")
    stamp = execute.execute(path, profile="laptop")
    assert list(stamp["presets"]) == ["dp_primer"]          # only what the notebook read
    assert "dpbook/presets.py" not in stamp["package_files"]  # the table is not hashed as a whole
    assert provenance.problems(path) == []
    from dpbook.presets import PRESETS
    edited = {**PRESETS, "dp_primer": {**PRESETS["dp_primer"], "base": {**PRESETS["dp_primer"]["base"], "delta": 1e-6}},
              "baseline": {}}
    hashes = provenance.preset_hashes(["dp_primer"], edited)
    assert hashes["dp_primer"] != stamp["presets"]["dp_primer"]  # a changed value changes the hash
    nb = nbformat.read(path, as_version=4)
    nb.metadata["dpbook"]["presets"]["dp_primer"] = hashes["dp_primer"]
    nbformat.write(nb, path)
    assert any("settings it read changed" in p for p in provenance.problems(path))


def test_a_failing_notebook_is_not_written(tmp_path):
    from nbclient.exceptions import CellExecutionError

    path = tmp_path / "broken.ipynb"
    _tiny_notebook(path, "raise RuntimeError('boom')")
    before = path.read_text()
    with pytest.raises(CellExecutionError, match="boom"):
        execute.execute(path, profile="laptop")
    assert path.read_text() == before
