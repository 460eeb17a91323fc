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
