#!/usr/bin/env bash
# The decisive experiment (issue 26): does masked pretraining on unlabelled jets beat what a
# physicist already has? launch/label_efficiency.sh with a test split large enough to tell
# (10,800 jets: AUC std ~0.003) and every control: the random-encoder probe, the same
# classifier from scratch, logistic regression and gradient-boosted trees on 22 jet
# observables (N-subjettiness and mass included), and the trees on observables + the frozen
# pretrained encoder's features. The report's verdict is against the strongest control.
#   bash launch/decisive.sh [--config.FIELD=VALUE ...]
# Labelled set: 18,000 generated top/QCD jets (Pythia seed 2) split 3,600 / 3,600 / 10,800;
# unlabelled pool: 6,000 jets (seed 3; pretraining reads its 5,400 train jets). Generation
# takes about 15 min per 18,000 jets with 2 workers on an idle 2-core machine (much longer
# under load). Every variable of label_efficiency.sh can be overridden, e.g. POOL=50000
# SIZES=100,300,1000,3000,all SEEDS=0,1,2,3,4 STAGES=...,resnet (hours here).
export NUM="${NUM:-18000}" SEED="${SEED:-2}" SPLIT="${SPLIT:-0.2,0.2,0.6}"
export POOL="${POOL:-6000}" POOL_SEED="${POOL_SEED:-3}" POOL_SPLIT="${POOL_SPLIT:-0.9,0.05,0.05}"
export SIZES="${SIZES:-100,1000}" SEEDS="${SEEDS:-0,1,2}" WARMUP="${WARMUP:-100}"
export STEPS="${STEPS:-pretrain=1500,probe=300,finetune=300,resnet=300}"
export STAGES="${STAGES:-pretrain,probe,probe_random,finetune,scratch,observables,observables_gbt,observables_encoder}"
export OUT="${OUT:-workdirs/decisive}" RUN_NAME=decisive
exec bash "$(dirname "${BASH_SOURCE[0]}")/label_efficiency.sh" "$@"
