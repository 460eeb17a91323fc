"""Numbers published by others, for showing beside ours. Each entry names its source.

These are the only typed-in results in the project, and they are never ours: every number of ours
comes from a run.
"""

# Lee, Ajanthan & Torr, "SNIP: Single-shot network pruning based on connection sensitivity",
# ICLR 2019, Table 1: MNIST test error (%) of the reference (dense) network and of SNIP at the given
# sparsity. Their recipe: SGD, momentum 0.9, batch 100, weight decay 5e-4, learning rate 0.1 decayed
# by 0.1 every 25k iterations, 10% of the training set held out for validation.
SNIP_TABLE1_ERROR = {
    ("lenet300_100", 0.0): 1.7,
    ("lenet300_100", 0.95): 1.6,
    ("lenet300_100", 0.98): 2.4,
    ("lenet5_caffe", 0.0): 0.9,
    ("lenet5_caffe", 0.98): 0.8,
    ("lenet5_caffe", 0.99): 1.1,
}

# The project's own starting write-up (shared/seeds), Experiment 3: average forgetting (%) on Split
# CIFAR-100 it *expected*, marked there "replace with your results". Hypotheses, never measurements:
# the notebooks show them only to say whether our runs bear them out.
WRITEUP_EXPECTED_FORGETTING = {"finetune": 72.0, "ewc": 31.0, "snip_ewc": 18.0}
# Experiment 4's expectation was qualitative: PackNet "moderate" forgetting and "good" accuracy,
# SNIP-PackNet "low" forgetting and the "best" accuracy.
WRITEUP_EXPECTED_PACKNET = {"packnet": "moderate forgetting, good final accuracy",
                            "snip_packnet": "low forgetting, best final accuracy"}

# von Oswald, Zhao, Kobayashi, Schug, Caccia, Zucchet & Sacramento, "Learning where to learn: Gradient
# sparsity in meta and continual learning", NeurIPS 2021: the results table of their code's README
# (shared/seeds/002), mini-ImageNet 5-way test accuracy (%). Their BOIL figures are quoted from Oh et al.
# (ICLR 2021); None where the table has none. Keys: (model, k_shot).
SPARSE_MAML_MINI_IMAGENET = {
    ("conv4", 5): {"maml": 63.15, "anil": 61.50, "boil": 66.45, "sparse_maml": 67.03, "sparse_relu_maml": 66.80},
    ("conv4", 1): {"maml": 48.07, "anil": 46.70, "boil": 49.61, "sparse_maml": 50.35, "sparse_relu_maml": 50.15},
    ("resnet12", 5): {"maml": 69.36, "anil": 70.03, "boil": 70.50, "sparse_maml": 70.02, "sparse_relu_maml": 73.01},
    ("resnet12", 1): {"maml": 53.91, "anil": 55.25, "boil": None, "sparse_maml": 55.02, "sparse_relu_maml": 56.39},
}

# Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable closed-form solvers",
# ICLR 2019, Table 1: MAML (4-layer ConvNet) on CIFAR-FS, 5-way test accuracy (%) by k_shot.
MAML_CIFAR_FS = {1: 58.9, 5: 71.5}

# van de Ven & Tolias, "Three scenarios for continual learning" (arXiv:1904.07734, 2019), and van de Ven,
# Tuytelaars & Tolias, "Three types of incremental learning" (Nature Machine Intelligence 4:1185-1197,
# 2022): their result tables could not be read on this project's offline machines, so none of their
# accuracies is typed here (a number recalled from memory is not a source). What could be read is the
# protocol their code runs by default: GMvandeVen/continual-learning, param_values.py
# (set_default_values) and options.py at commit df9f983c1f3981496d2ca128cbdf1d846e33adab (the code of the
# 2022 article). Per benchmark: tasks ("contexts"), Adam iterations per task at `batch` images, the
# learning rate, and the MLP: `fc_layers` fully connected layers (the output layer included) of
# `fc_units` hidden units each.
VAN_DE_VEN_PROTOCOL = {
    "split": dict(tasks=5, iterations=2000, batch=128, lr=0.001, optimizer="adam", fc_layers=3, fc_units=400),
    "permuted": dict(tasks=10, iterations=5000, batch=128, lr=0.0001, optimizer="adam", fc_layers=3, fc_units=1000),
}
VAN_DE_VEN_SOURCE = ("GMvandeVen/continual-learning, param_values.py and options.py at commit df9f983 "
                     "(defaults of the code behind van de Ven, Tuytelaars & Tolias 2022)")

# Meta-learning protocols to set beside notebook 06's settings, keyed by `metarun.MetaRun` field. None
# where the source does not state the value (never filled from memory). Each entry's source is in
# META_PROTOCOL_SOURCES.
# - MAML (Finn et al. 2017): the usage lines of cbfinn/maml main.py at commit 007d776 and its flag
#   defaults: `--meta_lr` 0.001 (Adam), `--num_filters` 64 unless given (32 on mini-ImageNet), second
#   order unless `--stop_grad`, 600 test episodes (NUM_TEST_POINTS). Queries per class, by one rule for
#   both MAML entries: the images per class main.py's DataGenerator draws beyond the K support images, one
#   number where meta-training and test agree, else each phase named. On mini-ImageNet it draws K + 15 in
#   meta-training and K * 2 at test (`DataGenerator(update_batch_size*2)`): 15, then K = 1; on Omniglot
#   `DataGenerator(update_batch_size*2)` in both: K = 1. Test-time steps: 10 on mini-ImageNet
#   (`test_num_updates`); on Omniglot the test graph also runs 10 and reports every step, so which one is
#   the result is not stated there.
# - Sparse-MAML (von Oswald et al. 2021): the Conv-4 5-shot sparse-MAML line of run_sparse_MAML.sh
#   (Johswald/learning_where_to_learn at e6eb009) and parser.py's defaults: `--hidden_size` 64, `--lr`
#   0.001 (Adam), first order (`--second_order` off), 400 epochs of 100 meta-batches of 2 tasks, 35
#   inner steps at `--step_size` 0.25; train.py (1b25d05) adapts with `--gradient_steps` at evaluation
#   too; 500 test episodes. Its queries per class (`--num_shots_test`, 15, documented as "K shots test
#   phase") are not stated as such. Its "1-SHOT" Conv-4 line passes `--num_shots_train=5` too.
META_PROTOCOLS = {
    "MAML, mini-ImageNet 5-way 1-shot": dict(
        filters=32, k_shot=1, q_query="15 in meta-training, 1 at test", meta_batch=4, iterations=60000,
        inner_steps=5, eval_inner_steps=10, inner_lr=0.01, outer_lr=0.001, first_order=False, test_episodes=600),
    "MAML, Omniglot 5-way 1-shot": dict(
        filters=64, k_shot=1, q_query=1, meta_batch=32, iterations=40000, inner_steps=1, eval_inner_steps=None,
        inner_lr=0.4, outer_lr=0.001, first_order=False, test_episodes=600),
    "Sparse-MAML run script, Conv-4 5-way 5-shot": dict(
        filters=64, k_shot=5, q_query=None, meta_batch=2, iterations=40000, inner_steps=35, eval_inner_steps=35,
        inner_lr=0.25, outer_lr=0.001, first_order=True, test_episodes=500),
}
META_PROTOCOL_SOURCES = {
    "MAML, mini-ImageNet 5-way 1-shot": "cbfinn/maml main.py at 007d776 (usage line and flag defaults)",
    "MAML, Omniglot 5-way 1-shot": "cbfinn/maml main.py at 007d776 (usage line and flag defaults)",
    "Sparse-MAML run script, Conv-4 5-way 5-shot": ("Johswald/learning_where_to_learn run_sparse_MAML.sh at e6eb009, "
                                                    "parser.py defaults, train.py at 1b25d05"),
}
