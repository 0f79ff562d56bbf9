"""Source 'text_file': your own text.

config.data.path is one of
  - a .txt file: one example per line, unlabelled;
  - a .csv / .tsv / .jsonl file with a text column (config.data.text_column)
    and, optionally, a label column (config.data.label_column; '' = unlabelled);
    labels are strings or integers, numbered in sorted order of the training
    file's labels;
  - a folder with one sub-folder per class, each file in it (.txt) one example.
The 'test' split reads config.data.test_path (same format); when that is ''
a stratified config.data.test_fraction of the file is carved off as test
(deterministic, the same whatever the training seed). Example ids are the
line / row / file numbers of the file read, so they do not move when a split
is carved. Bytes that are not UTF-8 read as U+FFFD; see text_data for empty
lines and long texts.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np

from contrastive_jax.data import text_data

SPLIT_SEED = 0


def _open(path: str):
  return open(path, encoding='utf-8', errors='replace', newline='')


def _read_table(path: str, text_column: str, label_column: str
                ) -> tuple[list[str], list[Any] | None]:
  ext = os.path.splitext(path)[1].lower()
  if ext == '.jsonl':
    rows = []
    with _open(path) as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f'{path}:{n}: not a JSON object ({e.msg}).') from None
  else:
    with _open(path) as f:
      rows = list(csv.DictReader(f, delimiter='\t' if ext == '.tsv' else ','))
  if not rows:
    raise ValueError(f'{path} holds no rows.')
  columns = list(rows[0].keys())
  if text_column not in columns:
    raise ValueError(f'{path}: no text column {text_column!r} (config.data.text_column); '
                     f'its columns are {columns}.')
  if label_column and label_column not in columns:
    raise ValueError(f'{path}: no label column {label_column!r} (config.data.label_column); '
                     f"its columns are {columns}. Set --config.data.label_column='' for "
                     'unlabelled text.')
  texts = [str(r.get(text_column) or '') for r in rows]
  labels = [r.get(label_column) for r in rows] if label_column else None
  if labels is not None and any(l is None or str(l).strip() == '' for l in labels):
    bad = next(i for i, l in enumerate(labels) if l is None or str(l).strip() == '')
    raise ValueError(f'{path}: row {bad + 1} has no value in the label column '
                     f'{label_column!r}.')
  return texts, labels


def _read_folder(path: str) -> tuple[list[str], list[Any]]:
  classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  if not classes:
    raise ValueError(f'{path}: a text folder needs one sub-folder per class; found none.')
  texts, labels = [], []
  for c in classes:
    for name in sorted(os.listdir(os.path.join(path, c))):
      with _open(os.path.join(path, c, name)) as f:
        texts.append(f.read())
      labels.append(c)
  return texts, labels


@functools.lru_cache(maxsize=4)
def _read(path: str, text_column: str, label_column: str
          ) -> tuple[tuple[str, ...], tuple[Any, ...] | None]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.data.path: {path} does not exist (source=text_file).')
  if os.path.isdir(path):
    texts, labels = _read_folder(path)
  elif os.path.splitext(path)[1].lower() in ('.csv', '.tsv', '.jsonl'):
    texts, labels = _read_table(path, text_column, label_column)
  else:
    with _open(path) as f:
      texts, labels = [line.rstrip('\r\n') for line in f], None
  return tuple(texts), None if labels is None else tuple(str(l).strip() for l in labels)


def _split(data_cfg: Any, path: str, name: str, classes: tuple[str, ...] | None
           ) -> text_data.TextSplit:
  texts, raw = _read(path, data_cfg.text_column, data_cfg.label_column)
  if raw is None:
    labels, class_names = np.full(len(texts), -1, np.int32), ()
  else:
    class_names = classes if classes is not None else tuple(sorted(set(raw)))
    index = {c: i for i, c in enumerate(class_names)}
    unseen = sorted(set(raw) - set(index))
    if unseen:
      raise ValueError(f'{path}: labels {unseen[:5]} do not occur in the training data '
                       f'(its classes: {list(class_names)[:10]}...).')
    labels = np.asarray([index[l] for l in raw], np.int32)
  texts, labels, kept = text_data.clean(texts, labels, name)
  return text_data.TextSplit(texts=texts, labels=labels, class_names=class_names, name=name,
                             ids=kept.astype(np.int64))


def read_text_file(data_cfg: Any, split: str) -> text_data.TextSplit:
  path = str(data_cfg.get('path', '') or '')
  if not path:
    raise ValueError('config.data.path is empty: give a .txt / .csv / .tsv / .jsonl file or '
                     'a folder of class sub-folders (source=text_file).')
  if split not in ('train', 'test'):
    raise ValueError(f"The text_file source has splits 'train' and 'test'; got {split!r}.")
  base = os.path.basename(os.path.normpath(path))
  full = _split(data_cfg, path, f'{base}:all', None)
  test_path = str(data_cfg.get('test_path', '') or '')
  if test_path:
    if split == 'train':
      return dataclasses.replace(full, name=f'{base}:train')
    classes = full.class_names if full.class_names else None
    return _split(data_cfg, test_path, f'{os.path.basename(test_path)}:test', classes)
  if split == 'test' and data_cfg.test_fraction <= 0:
    raise ValueError(f'{path} has no test split: set config.data.test_path, or '
                     'config.data.test_fraction > 0 to carve one.')
  train_pos, test_pos = text_data.stratified_split(full.labels, data_cfg.test_fraction,
                                                   SPLIT_SEED)
  pos = train_pos if split == 'train' else test_pos
  return text_data.TextSplit(texts=tuple(full.texts[i] for i in pos), labels=full.labels[pos],
                             class_names=full.class_names, name=f'{base}:{split}',
                             ids=full.ids[pos])


text_data.register_text_source(
    'text_file', read_text_file,
    doc='your text: .txt lines, .csv/.tsv/.jsonl columns or class sub-folders')
