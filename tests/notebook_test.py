"""colab/ notebooks: valid, outputs stripped, real library names; the
quickstart executed top to bottom (nbclient, its `tiny` variant)."""
import json
import os
import sys
import time

from IPython.core.inputtransformer2 import TransformerManager
import nbclient
import nbformat
import pytest

from configs import pipeline as pipeline_config
from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
# Kernel spec name of the test's kernel (this interpreter, in a temp dir).
KERNEL = "genrec_jax_test"
# Seconds the quickstart's tiny run may take (1.5-4 min on 2 shared cores).
QUICKSTART_SECONDS = 600


def _code_cells(nb) -> list[str]:
  return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebooks_found():
  assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb",
                                         "tpu_beauty.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_valid_stripped_and_compiles(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):  # git holds no outputs
    assert "outputs" not in cell or cell.outputs == [], (path.name, i)
    assert cell.get("execution_count") is None, (path.name, i)
  # Every code cell compiles as IPython runs it (%magics, !shell included).
  transform = TransformerManager().transform_cell
  for i, src in enumerate(_code_cells(nb)):
    compile(transform(src), f"{path.name}[{i}]", "exec")
  code = "\n".join(_code_cells(nb))
  assert "from genrec_jax import pipeline" in code


def test_tpu_beauty_uses_real_configs():
  code = "\n".join(_code_cells(nbformat.read(REPO / "colab" /
                                             "tpu_beauty.ipynb", 4)))
  assert "get_config('beauty_paper')" in code
  config = pipeline_config.get_config("beauty_paper")
  for field in ("sequence_file", "items_file"):  # the fields it sets
    assert f"config.prepare_data.data.{field} = " in code
    assert field in config.prepare_data.data
  assert any(config.stage_kinds.get(n) == "train_rl" for n in config.stages)
  from genrec_jax import pipeline  # pylint: disable=g-import-not-at-top
  for name in ("run", "format_table", "format_examples"):
    assert f"pipeline.{name}(" in code and callable(getattr(pipeline, name))


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
  """The quickstart's tiny variant in a kernel of this interpreter, from a
  temp folder (its workdir goes there), on one CPU device as a user's."""
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "genrec_jax test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("GENREC_QUICKSTART", "tiny")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  work = tmp_path / "work"
  work.mkdir()
  nb = nbformat.read(REPO / "colab" / "quickstart.ipynb", as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=QUICKSTART_SECONDS, kernel_name=KERNEL,
      resources={"metadata": {"path": str(work)}})
  t0 = time.time()
  client.execute()  # raises CellExecutionError on the first failing cell
  seconds = time.time() - t0
  print(f"quickstart (tiny): {seconds:.0f}s")
  assert seconds < QUICKSTART_SECONDS

  def text(cell):
    return "".join(o.get("text", "") for o in cell.outputs
                   if o.output_type == "stream" and o.name == "stdout")

  code = [c for c in nb.cells if c.cell_type == "code"]
  table = next(text(c) for c in code if "format_table" in c.source)
  for row in ("sasrec", "tiger", "minigr_cf_rl", "test/ndcg@10"):
    assert row in table, table
  assert "held-out next item" in next(
      text(c) for c in code if "format_examples" in c.source)
  images = [o for c in code for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) >= 2  # training curves and code usage
  assert (work / "runs" / "quickstart_tiny" / "pipeline" /
          "results.json").exists()
  assert "cpu" in text(code[1])
