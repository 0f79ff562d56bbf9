"""The Colab notebook's Python cells run as written (tiny configs, no install cell)."""

import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_cells_run(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  with open(os.path.join(REPO, 'launch', 'colab.ipynb')) as f:
    cells = [''.join(c['source']) for c in json.load(f)['cells'] if c['cell_type'] == 'code']
  pretrain_cell, eval_cell, encoder_cell = cells[1:]
  assert "'/content/cj_smoke'" in pretrain_cell and "configs/smoke.py')" in pretrain_cell
  pretrain_cell = (pretrain_cell.replace("'/content/cj_smoke'", repr(str(tmp_path / 'w')))
                   .replace("configs/smoke.py')", "configs/smoke.py', 'tiny')"))
  eval_cell = eval_cell.replace("configs/eval.py')", "configs/eval.py', 'tiny')")
  scope: dict = {}
  for cell in (pretrain_cell, eval_cell, encoder_cell):
    exec(compile(cell, 'colab cell', 'exec'), scope)  # pylint: disable=exec-used
  assert scope['results']['step'] == 6
  assert 0.0 <= scope['eval_results']['linear_top1'] <= 1.0
  assert scope['out']['h'].shape == (8, 16) and scope['out']['z'].shape == (8, 16)
