r"""Text representations on WordNet noun glosses: a pretrained RNN against baselines.

  python benchmarks/text_quality.py --budget-minutes 20 --out /tmp/cj_textq
  python benchmarks/text_quality.py --quick --out /tmp/cj_textq_quick     # embedded, minutes
  python benchmarks/text_quality.py --budget-minutes 5 --set text_augment.deletion=0.2 \
      --only-ours --out /tmp/v1          # a recipe choice, scored on val

Every arm uses the same splits: 'wordnet_glosses' train minus the val carve
(configs/text_wordnet.py's val_examples, the pipeline's fixed seed), val for
every choice (C, learning-rate grids), test only for the reported figures,
and the same class-balanced 1% / 10% label subsets (select_label_subset,
label_seed 0) the finetune binary draws. Arms:
  - ours: pretrain configs/text_wordnet.py for the budget (SIGTERM at the
    deadline: the step reached is evaluated), then finetune 1% / 10%
    (configs/text_finetune.py: the whole network, or the classifier alone on
    frozen h, whichever val prefers) and the eval binary's linear probe on
    frozen h with every label;
  - scratch: the same RNN trained from scratch on each labelled subset
    (finetune with model_from, no init_from);
  - random: the eval binary's linear probe on a randomly initialised encoder;
  - tfidf: TF-IDF of word 1-2 grams + logistic regression, C chosen on val;
  - sgns_avg: gensim skip-gram (Mikolov et al. 2013) trained on the
    unlabelled text (every WordNet gloss but the noun test split's; --quick:
    the training split's), averaged word vectors + logistic regression;
  - scratch_w2v (with --embedding-init): the RNN from scratch with its token
    embedding started from this project's word2vec vectors;
  - w2v_avg: the same with this project's word2vec vectors (--embedding-init
    trains them on every gloss but the noun test split's and also starts the
    RNN's token embedding from them; or --w2v-workdir).
Accuracy and balanced accuracy (mean per-class recall: the classes are very
unequal) on test. Writes OUT/text_quality.json and OUT/text_quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import provenance  # pylint: disable=g-import-not-at-top,wrong-import-position
from quality import _load_config, _run  # pylint: disable=g-import-not-at-top,wrong-import-position

PRETRAIN = os.path.join(REPO, 'configs', 'text_wordnet.py')
FINETUNE = os.path.join(REPO, 'configs', 'text_finetune.py')
EVAL = os.path.join(REPO, 'configs', 'eval.py')
FRACTIONS = {'1': 0.01, '10': 0.1}
C_GRID = (0.1, 1.0, 10.0, 100.0)
VAL_CLASS_FRACTION = 0.5     # configs/text_wordnet.py's config.data.val_max_class_fraction
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


# --- The splits, as the binaries cut them -------------------------------------------

def splits(source: str, val_examples: int) -> dict[str, tuple[list[str], np.ndarray]]:
  """{'train': (texts, labels), 'val': ..., 'test': ...} and the label subsets
  {'1': positions in train, '10': ...}."""
  from contrastive_jax.data import pipeline, sources, text_data  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(source=source, wordnet_dir=''))
  full, test = text_data.read_texts(cfg, 'train'), text_data.read_texts(cfg, 'test')
  stub = sources.ArraySource(images=np.zeros((len(full.texts), 1), np.int32),
                             labels=full.labels, num_classes=full.num_classes, name=full.name,
                             ids=full.ids, input_key='tokens')
  train, val = sources.split_train_val(stub, val_examples, seed=pipeline.VAL_SEED,
                                      max_class_fraction=VAL_CLASS_FRACTION)
  text_of = dict(zip(full.ids.tolist(), full.texts))
  out = {name: ([text_of[i] for i in s.example_ids().tolist()], s.labels)
         for name, s in (('train', train), ('val', val))}
  out['test'] = (list(test.texts), test.labels)
  subsets = {k: sources.select_label_subset(train.labels, fraction=f, seed=0)
             for k, f in FRACTIONS.items()}
  subsets['100'] = np.arange(len(train.labels))
  return out, subsets


def scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  classes = np.unique(labels)
  return {'acc': float(np.mean(pred == labels)),
          'balanced_acc': float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))}


def logistic(train_x, train_y, val_x, val_y, test_x, test_y) -> dict:
  """Logistic regression, C chosen on val; test scores of the chosen C."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  best = None
  for c in C_GRID:
    model = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
    val = float(np.mean(model.predict(val_x) == val_y))
    if best is None or val > best[0]:
      best = (val, c, model)
  val, c, model = best
  return dict(scores(model.predict(test_x), test_y), val_acc=val, C=c)


# --- Baselines ----------------------------------------------------------------------

def tfidf_arm(data, subsets) -> dict:
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  (tr_t, tr_y), (va_t, va_y), (te_t, te_y) = data['train'], data['val'], data['test']
  out = {}
  for frac, pos in subsets.items():
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x = vec.fit_transform([tr_t[i] for i in pos])
    out[frac] = logistic(x, tr_y[pos], vec.transform(va_t), va_y, vec.transform(te_t), te_y)
  return out


def words(text: str) -> list[str]:
  return TOKEN.findall(text.lower())


def averaged(texts: list[str], index: dict[str, int], vectors: np.ndarray) -> np.ndarray:
  out = np.zeros((len(texts), vectors.shape[1]), np.float32)
  for n, t in enumerate(texts):
    rows = [index[w] for w in words(t) if w in index]
    if rows:
      out[n] = vectors[rows].mean(0)
  return out


def vectors_arm(data, subsets, word_list: list[str], vectors: np.ndarray) -> dict:
  index = {w: i for i, w in enumerate(word_list)}
  feats = {k: averaged(data[k][0], index, vectors) for k in ('train', 'val', 'test')}
  out = {}
  for frac, pos in subsets.items():
    out[frac] = logistic(feats['train'][pos], data['train'][1][pos], feats['val'],
                         data['val'][1], feats['test'], data['test'][1])
  return out


def gensim_vectors(texts: list[str], epochs: int, seed: int) -> tuple[list[str], np.ndarray]:
  from gensim.models import Word2Vec  # pylint: disable=g-import-not-at-top
  model = Word2Vec([words(t) for t in texts], vector_size=100, window=5, min_count=2, sg=1,
                   negative=5, sample=1e-3, epochs=epochs, workers=2, seed=seed)
  return list(model.wv.index_to_key), np.asarray(model.wv.vectors)


def unlabelled_corpus(path: str) -> int:
  """Every WordNet gloss but those of the noun test split, one per line: the
  unlabelled text a run may read (the test split's text stays unseen)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from contrastive_jax.data import text_data, wordnet  # pylint: disable=g-import-not-at-top
  test = text_data.read_texts(ml_collections.ConfigDict(
      dict(source='wordnet_glosses', wordnet_dir='')), 'test')
  held_out = set(test.ids.tolist())
  lines = [s.gloss for pos in wordnet.POS_FILES for s in wordnet.iter_synsets('', pos)
           if not (pos == 'noun' and s.offset in held_out)]
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return len(lines)


def word2vec(out: str, dim: int) -> str:
  """This project's word2vec on unlabelled_corpus (vector_size = the RNN's
  embed_dim, so the vectors can start its embedding); returns the workdir."""
  corpus_path = os.path.join(out, 'unlabelled_glosses.txt')
  unlabelled_corpus(corpus_path)
  workdir = os.path.join(out, 'word2vec')
  _run(['contrastive_jax.word2vec', f'--config={os.path.join(REPO, "configs", "word2vec.py")}',
        f'--workdir={workdir}', f'--config.vector_size={dim}', '--config.min_count=2',
        '--config.corpus.source=text', f'--config.corpus.path={corpus_path}'],
       os.path.join(out, 'word2vec.log'))
  return workdir


# --- The binaries --------------------------------------------------------------------

def _json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def pretrain(out: str, name: str, overrides: list[str], minutes: float, config_arg: str) -> float:
  workdir = os.path.join(out, name)
  return _run(['contrastive_jax.pretrain', f'--config={PRETRAIN}{config_arg}', f'--workdir={workdir}',
               *overrides], os.path.join(out, f'{name}.log'),
              deadline_s=minutes * 60 if minutes else None)


def finetune(out: str, name: str, frac: str, overrides: list[str], minutes: float) -> dict:
  workdir = os.path.join(out, name)
  seconds = _run(['contrastive_jax.finetune', f'--config={FINETUNE}:{frac}',
                  f'--workdir={workdir}', *overrides], os.path.join(out, f'{name}.log'),
                 deadline_s=minutes * 60 if minutes else None)
  res = _json(os.path.join(workdir, 'finetune_results.json'))
  return {'acc': res.get('test_top1'), 'balanced_acc': res.get('test_balanced_acc'),
          'val_acc': res.get('val_top1'), 'steps': res.get('step'), 'seconds': seconds}


def linear_probe(out: str, init_from: str, name: str, overrides: list[str]) -> dict:
  workdir = os.path.join(out, name)
  _run(['contrastive_jax.eval', f'--config={EVAL}', f'--config.init_from={init_from}',
        f'--workdir={workdir}', '--config.modes=linear,knn', '--config.plot_methods=',
        *overrides], os.path.join(out, f'{name}.log'))
  res = _json(os.path.join(workdir, 'eval', 'results.json'))
  return {'acc': res.get('linear_top1'), 'val_acc': res.get('linear_val_top1'),
          'knn20_acc': res.get('knn_k20_top1')}


# --- Report ---------------------------------------------------------------------------

def table(rows: dict) -> str:
  lines = ['| arm | 1% acc / bal | 10% acc / bal | 100% (probe) acc / bal |', '|---|---|---|---|']
  for arm, by_frac in rows.items():
    cells = []
    for frac in ('1', '10', '100'):
      r = by_frac.get(frac)
      if not r or r.get('acc') is None:
        cells.append('-')
      else:
        bal = r.get('balanced_acc')
        cells.append(f"{100 * r['acc']:.2f} / " + (f'{100 * bal:.2f}' if bal is not None else '-'))
    lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--budget-minutes', type=float, default=20.0)
  parser.add_argument('--finetune-minutes', type=float, default=6.0)
  parser.add_argument('--quick', action='store_true', help='embedded subset, tiny budgets')
  parser.add_argument('--only-ours', action='store_true', help='pretrain + probe only (val)')
  parser.add_argument('--set', action='append', default=[], help='pretrain config overrides')
  parser.add_argument('--w2v-workdir', default='', help="this project's word2vec vectors")
  parser.add_argument('--embedding-init', action='store_true',
                      help="train this project's word2vec on the unlabelled glosses first and "
                           'start the RNN embedding from it (also the w2v_avg baseline)')
  parser.add_argument('--gensim-epochs', type=int, default=10)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  arg = ':embedded' if args.quick else ''
  minutes = 1.0 if args.quick else args.budget_minutes
  ft_minutes = 1.0 if args.quick else args.finetune_minutes
  val_examples = 260 if args.quick else 2600
  source = 'embedded_text' if args.quick else 'wordnet_glosses'
  data_flags = [f'--config.data.source={source}', f'--config.data.val_examples={val_examples}']
  sets = [f'--config.{s}' for s in args.set]
  import datetime  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  report: dict = {'commit': provenance.git_commit(), 'machine': platform.platform(),
                  'cpus': os.cpu_count(), 'date': datetime.date.today().isoformat(),
                  'budget_minutes': minutes,
                  'overrides': args.set, 'rows': {}}
  rows = report['rows']
  t0 = time.time()

  # Ours: pretrain for the budget, then the probes and fine-tunes.
  if args.embedding_init and not args.w2v_workdir:
    t_w2v = time.time()
    embed_dim = _load_config(f'{PRETRAIN}{arg}').model.rnn.embed_dim
    args.w2v_workdir = word2vec(args.out, embed_dim)
    report['word2vec_seconds'] = time.time() - t_w2v
  init = [f'--config.model.embedding_init={args.w2v_workdir}'] if args.embedding_init else []
  report['pretrain_seconds'] = pretrain(args.out, 'pretrain', sets + init, minutes, arg)
  pre = os.path.join(args.out, 'pretrain')
  rows['ours'] = {'100': linear_probe(args.out, pre, 'probe', [])}
  if args.only_ours:
    report['wall_seconds'] = time.time() - t0
    _write(args.out, report)
    return
  for frac in FRACTIONS:
    # Fine-tune everything, or only the classifier on frozen h: chosen on val.
    tried = {'all': finetune(args.out, f'ft{frac}', frac,
                             [f'--config.init_from={pre}', *data_flags], ft_minutes),
             'frozen': finetune(args.out, f'ft{frac}_frozen', frac,
                                [f'--config.init_from={pre}', *data_flags,
                                 '--config.fine_tune_after_block=99',
                                 '--config.optim.learning_rate=0.003'], ft_minutes)}
    pick = max(tried, key=lambda k: tried[k]['val_acc'] or 0.0)
    rows['ours'][frac] = dict(tried[pick], chosen=pick,
                              others={k: v for k, v in tried.items() if k != pick})
  # The same RNN from scratch, and its random-init probe.
  rows['scratch'] = {frac: finetune(args.out, f'scratch{frac}', frac,
                                    [f'--config.model_from={pre}', *data_flags], ft_minutes)
                     for frac in FRACTIONS}
  if init:  # word vectors alone, no contrastive pretraining
    rows['scratch_w2v'] = {frac: finetune(args.out, f'scratch_w2v{frac}', frac,
                                          [f'--config.model_from={pre}', *data_flags, *init],
                                          ft_minutes) for frac in FRACTIONS}
  _run(['contrastive_jax.pretrain', f'--config={PRETRAIN}{arg}',
        f'--workdir={os.path.join(args.out, "random")}', '--config.total_steps=1',
        '--config.optim.learning_rate=0', f'--config.data.tokenizer={pre}', *sets],
       os.path.join(args.out, 'random.log'))
  rows['random'] = {'100': linear_probe(args.out, os.path.join(args.out, 'random'),
                                        'random_probe', [])}
  # Host baselines on the same splits.
  data, subsets = splits(source, val_examples)
  rows['tfidf'] = tfidf_arm(data, subsets)
  corpus_path = os.path.join(args.out, 'unlabelled_glosses.txt')
  if not args.quick and not os.path.exists(corpus_path):
    unlabelled_corpus(corpus_path)
  if args.quick:
    unlabelled = data['train'][0] + data['val'][0]
  else:   # the text this project's word2vec reads
    with open(corpus_path, encoding='utf-8') as f:
      unlabelled = f.read().splitlines()
  rows['sgns_avg'] = vectors_arm(data, subsets, *gensim_vectors(unlabelled, args.gensim_epochs, 0))
  if args.w2v_workdir:
    from contrastive_jax.word2vec.vectors import load_word_vectors  # pylint: disable=g-import-not-at-top
    rows['w2v_avg'] = vectors_arm(data, subsets, *load_word_vectors(args.w2v_workdir))
  report['wall_seconds'] = time.time() - t0
  _write(args.out, report)


def _write(out: str, report: dict) -> None:
  with open(os.path.join(out, 'text_quality.json'), 'w') as f:
    json.dump(report, f, indent=1, default=str)
  text = table(report['rows'])
  with open(os.path.join(out, 'text_quality.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
