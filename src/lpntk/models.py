"""Classifiers used in the paper, built by name.

Every model maps a batch ``(B, C, H, W)`` to logits ``(B, K)`` and records the ``input_shape`` and
``num_classes`` it was built for, so a dataset of another shape is rejected with a clear message.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._errors import ConfigError, DataError, ModelError


class Classifier(nn.Module):
    """Base class: remembers the input shape ``(C, H, W)`` and number of classes ``K``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ConfigError(
                f"input_shape must be (C, H, W) with positive sizes, got {input_shape}"
            )
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)


class LeNet5(Classifier):
    """Classic LeNet-5 (LeCun et al.): conv6-pool-conv16-pool-fc120-fc84-fcK, about 61.7k parameters
    on 28x28 MNIST. ReLU and max-pooling instead of the original tanh and average subsampling."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10):
        super().__init__(input_shape, num_classes)
        c, h, w = self.input_shape
        # conv1 is padded by 2 so a 28x28 digit keeps its size, as in the original 32x32 input.
        fh, fw = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ConfigError(f"lenet5 needs images of at least 12x12 pixels, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MnistCNN(Classifier):
    """The PyTorch MNIST example network that the paper's public code calls "LeNet":
    conv32-conv64-maxpool-fc128-fcK with dropout, about 1.2M parameters on 28x28 MNIST."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, dropout=True):
        super().__init__(input_shape, num_classes)
        c, h, w = self.input_shape
        fh, fw = (h - 4) // 2, (w - 4) // 2
        if fh < 1 or fw < 1:
            raise ConfigError(f"mnist_cnn needs images of at least 6x6 pixels, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25) if dropout else nn.Identity(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * fh * fw, 128),
            nn.ReLU(),
            nn.Dropout(0.5) if dropout else nn.Identity(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP3(Classifier):
    """Three-layer MLP (two hidden layers) for the learning-difficulty experiment (Sec. 3.2)."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, widths: Sequence[int] = (512, 256)):
        super().__init__(input_shape, num_classes)
        widths = [int(v) for v in widths]
        if len(widths) != 2 or min(widths) < 1:
            raise ConfigError(f"mlp3 takes two positive hidden widths, got {widths}")
        c, h, w = self.input_shape
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, widths[0]),
            nn.ReLU(),
            nn.Linear(widths[0], widths[1]),
            nn.ReLU(),
            nn.Linear(widths[1], num_classes),
        )

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    """ResNet basic block; ``norm`` builds the normalisation layer (BatchNorm or Identity)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        bias = isinstance(norm(1), nn.Identity)  # without BatchNorm the convolutions keep a bias
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), norm(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(Classifier):
    """ResNet-18, CIFAR variant: 3x3 stem, no max-pool (11.2M parameters). ``batch_norm=False``
    replaces every BatchNorm by the identity, as the paper's public code did."""

    def __init__(self, input_shape=(3, 32, 32), num_classes=10, batch_norm=True, width=64):
        super().__init__(input_shape, num_classes)
        norm = nn.BatchNorm2d if batch_norm else (lambda _c: nn.Identity())
        c = self.input_shape[0]
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=not batch_norm), norm(width), nn.ReLU()
        )
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


MODELS: dict[str, type[Classifier]] = {
    "lenet5": LeNet5,
    "mnist_cnn": MnistCNN,
    "mlp3": MLP3,
    "resnet18": ResNet18,
}


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **options) -> Classifier:
    """Build model ``name`` for images ``(C, H, W)`` with ``num_classes`` outputs (logits).

    ``options`` go to the model's constructor (``widths`` of ``mlp3``, ``batch_norm`` and
    ``width`` of ``resnet18``, ``dropout`` of ``mnist_cnn``); each must have the type of its
    default.

    >>> build_model("lenet5", (1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}", param="model"
        )
    cls = MODELS[name]
    _check_options(name, cls, options)
    if int(num_classes) < 2:  # the data's fault, not the model options'
        raise ConfigError(
            f"the data has {num_classes} class; a classifier needs at least 2 classes",
            param="dataset",
        )
    try:
        return cls(input_shape=tuple(input_shape), num_classes=num_classes, **options)
    except (TypeError, ValueError) as e:  # an option value the model cannot use
        raise ConfigError(
            f"model {name!r} cannot use options {options}: {e}", param="model_options"
        ) from None


def _check_options(name: str, cls: type, options: dict) -> None:
    """Each option must be a constructor argument and have the type of its default."""
    params = inspect.signature(cls.__init__).parameters
    accepted = {
        k: p.default for k, p in params.items() if k not in ("self", "input_shape", "num_classes")
    }
    for key, value in options.items():
        if key not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            raise ConfigError(
                f"model {name!r} has no option {key!r}; its options: {known}",
                param="model_options",
            )
        default = accepted[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):  # every integer option is a size
            ok = _size(value)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, (tuple, list)) and len(value) == len(default)
            ok = ok and all(_size(v) for v in value)
        else:
            ok = True
        if not ok:
            raise ConfigError(
                f"option {key}={_as_json(value)} of model {name!r} is not valid; expected a value "
                f"like the default {key}={_as_json(default)} (sizes are positive integers)",
                param="model_options",
            )


def _size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _as_json(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_input(model: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
    """Raise a clear error if data of ``input_shape`` / ``num_classes`` does not fit ``model``."""
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != tuple(input_shape):
        raise ConfigError(
            f"the dataset's images have shape {tuple(input_shape)} but the model was built for "
            f"{tuple(expected)}; build the model with input_shape={tuple(input_shape)}"
        )
    k = getattr(model, "num_classes", None)
    if k is not None and k != num_classes:
        raise ConfigError(f"the dataset has {num_classes} classes but the model outputs {k} logits")


def check_logits(logits, batch: int, num_classes: int | None = None, labels=None) -> None:
    """Raise a clear error unless ``logits`` is a ``(batch, K)`` tensor with ``K >= 2``
    (``K == num_classes`` when given) and ``labels`` ``(batch,)`` lie in ``0..K-1``."""
    ok = isinstance(logits, torch.Tensor) and logits.ndim == 2 and len(logits) == batch
    if not ok or (num_classes is not None and logits.shape[1] != num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(
            f"the model must return logits of shape (batch, K) = ({batch}, {num_classes or 'K'}); "
            f"it returned {got}"
        )
    if not logits.is_floating_point():
        raise ModelError(
            f"the model returned {logits.dtype} values; expected floating-point logits"
        )
    k = logits.shape[1]
    if k < 2:
        raise ModelError(f"the model returns {k} logit per sample; expected K >= 2 classes")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != batch:
            raise DataError(f"labels must have shape ({batch},); got {tuple(labels.shape)}")
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise DataError(
                f"label {int(bad[0])} is out of range for a model with K = {k} "
                f"logits; expected labels in 0..{k - 1}"
            )
