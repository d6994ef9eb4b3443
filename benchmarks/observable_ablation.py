# Why the observables win (the decisive run, README 'What pretraining buys'): the same logistic regression without the 5
# N-subjettiness features, and single observables' test AUC (sign-free), on the protocol's
# own labelled subset and its 10,800 test jets.
import sys

import numpy as np
from mae_jax.data import pipeline as pipeline_lib
from mae_jax.evaluate import baselines, metrics
# usage: python benchmarks/observable_ablation.py DATA_DIR PROTOCOL_ROOT [LABELLED] [SEED]
data, root = sys.argv[1], sys.argv[2]
size, seed = (int(sys.argv[3]) if len(sys.argv) > 3 else 100), (int(sys.argv[4]) if len(sys.argv) > 4 else 0)
tr, te = (np.load(f'{root}/cache/observables_{s}.npz', allow_pickle=True) for s in ('train', 'test'))
names = list(tr['names'])
keep = pipeline_lib.Pipeline(data, 'none').labelled_subset('train', size, seed)
x, y, xt, yt = tr['x'][keep], tr['y'][keep], te['x'], te['y']
def lr_auc(cols):
  m = baselines.LogisticRegression().fit(x[:, cols], y)
  r = metrics.classification_report(yt.astype(np.int64), m.decision_function(xt[:, cols]), logits=True, n_bootstrap=200)
  return r['auc'], r['auc_std']
tau = [i for i, n in enumerate(names) if n.startswith('tau')]
print('all %d observables: AUC %.4f ± %.4f' % ((len(names),) + lr_auc(list(range(len(names))))))
print('without N-subjettiness (%d): AUC %.4f ± %.4f' % ((len(names) - len(tau),) + lr_auc([i for i in range(len(names)) if i not in tau])))
single = []
for i, n in enumerate(names):
  a = metrics.classification_report(yt.astype(np.int64), xt[:, i], logits=True, n_bootstrap=0)['auc']
  single.append((max(a, 1 - a), n))
print('best single observables:', ', '.join('%s %.3f' % (n, a) for a, n in sorted(single, reverse=True)[:6]))
