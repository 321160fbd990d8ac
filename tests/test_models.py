import pytest
import torch

from lpntk import ConfigError
from lpntk.models import MODELS, build_model, check_input, count_parameters

LENET5_CIFAR = (
    (3 * 6 * 25 + 6)
    + (6 * 16 * 25 + 16)
    + (16 * 6 * 6 * 120 + 120)
    + (120 * 84 + 84)
    + (84 * 10 + 10)
)
MLP3_SMALL = (784 * 64 + 64) + (64 * 32 + 32) + (32 * 10 + 10)

# (name, input shape, options, trainable parameters with 10 classes)
CASES = [
    ("lenet5", (1, 28, 28), {}, 61_706),
    ("lenet5", (3, 32, 32), {}, LENET5_CIFAR),
    ("mnist_cnn", (1, 28, 28), {}, 1_199_882),
    ("mnist_cnn", (1, 28, 28), {"dropout": False}, 1_199_882),
    ("mlp3", (1, 28, 28), {"widths": (64, 32)}, MLP3_SMALL),
    ("resnet18", (3, 32, 32), {}, 11_173_962),
]


@pytest.mark.parametrize("name,shape,options,params", CASES)
def test_output_shape_and_parameter_count(name, shape, options, params):
    torch.manual_seed(0)
    assert count_parameters(build_model(name, shape, 10, **options)) == params
    model = build_model(name, shape, num_classes=7, **options).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    assert model.input_shape == shape and model.num_classes == 7


def test_resnet18_without_batchnorm_runs():
    model = build_model("resnet18", (3, 32, 32), 10, batch_norm=False)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_ten_class_counts_match_the_papers_networks():
    assert count_parameters(build_model("lenet5", (1, 28, 28), 10)) == 61_706
    assert count_parameters(build_model("mnist_cnn", (1, 28, 28), 10)) == 1_199_882
    assert count_parameters(build_model("resnet18", (3, 32, 32), 10)) == 11_173_962


def test_resnet_without_batchnorm_has_no_batchnorm():
    model = build_model("resnet18", (3, 32, 32), 10, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model = build_model("resnet18", (3, 32, 32), 10)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="known models: lenet5, mlp3, mnist_cnn, resnet18"):
        build_model("vgg", (1, 28, 28), 10)


def test_unknown_option_and_bad_shapes():
    with pytest.raises(ConfigError, match="has no option 'width'"):
        build_model("lenet5", (1, 28, 28), 10, width=3)
    with pytest.raises(ConfigError, match="at least 12x12"):
        build_model("lenet5", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        build_model("mlp3", (28, 28), 10)
    with pytest.raises(ConfigError, match="at least 2"):
        build_model("mlp3", (1, 28, 28), 1)


def test_check_input_rejects_mismatched_dataset():
    model = build_model("lenet5", (1, 28, 28), 10)
    check_input(model, (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"shape \(3, 32, 32\).*built for \(1, 28, 28\)"):
        check_input(model, (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="4 classes but the model outputs 10"):
        check_input(model, (1, 28, 28), 4)


def test_registry_is_complete():
    assert set(MODELS) == {"lenet5", "mnist_cnn", "mlp3", "resnet18"}
