import pytest

from snipnb.notebook import check_parameters, unknown_parameters

DECLARED = '''models = ["resnet18"]
seeds = 5
epochs = 30  # per run
lr = 0.05
dataset = "cifar100"
device = None
shard = None
'''


def test_a_misspelled_parameter_is_named_with_the_declared_ones():
    history = ["", "import os", DECLARED, "# Parameters\nepoch = 1\n", "check_parameters()"]
    with pytest.raises(ValueError, match=r"unknown parameter 'epoch'.*parameters are: models, seeds, epochs"):
        check_parameters(history)


@pytest.mark.parametrize("injected, problem", [
    ("epochs = {'lenet300_100': 40}", "'epochs' must be a int"),
    ("seeds = 2.5", "'seeds'"),
    ("dataset = 3", "'dataset'"),
    ("models = 'resnet18'", "'models'"),
])
def test_a_value_of_another_type_than_the_default_is_refused(injected, problem):
    assert problem in unknown_parameters(DECLARED, f"# Parameters\n{injected}\n")[0]


def test_matching_parameters_pass():
    ok = "# Parameters\nseeds = 3\nlr = 1\nmodels = ['vgg11']\ndevice = 'cpu'\nshard = '0/2'\nepochs = 2.0\n"
    assert unknown_parameters(DECLARED, ok) == []
    check_parameters(["", DECLARED, ok])
    check_parameters(["", DECLARED, "x = 1"])  # nothing injected: run by hand


def test_a_focus_parameter_follows_a_narrowed_grid_and_refuses_a_value_outside_it():
    from snipnb.notebook import pick

    assert pick("focus_k", None, [1, 2, 5, 10], preferred=5) == 5
    assert pick("focus_k", None, [1, 2], preferred=5) == 2  # -y "ks: [1, 2]" needs no second parameter
    assert pick("focus_sparsity", None, [0.5, 0.95], preferred=0.9) == 0.95
    assert pick("focus_k", None, [4, 6], preferred=5) == 4  # a tie goes to the smaller
    assert pick("focus_blocks", None, ["head", "all"], preferred="last_block") == "head"
    assert pick("focus_k", None, [None, 10]) is None  # None may itself be a grid value (the whole split)
    assert pick("focus_k", 10, [1, 10], preferred=5) == 10
    with pytest.raises(ValueError, match=r"focus_k must be one of \(1, 2\), got 5"):
        pick("focus_k", 5, [1, 2], preferred=5)
