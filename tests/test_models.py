"""convx.models: the seed's digits CNN (shapes, convx layers, training, save/load)
and AlphaGo's policy network."""
import pytest
import torch

import convx
from convx.data import load_sklearn_digits
from convx.models import DigitsCNN, GoPolicyNet, accuracy, load, save, train


def test_digits_cnn_has_the_seeds_shapes_and_parameter_counts():
    torch.manual_seed(0)
    model = DigitsCNN()
    acts = model.activations(torch.rand(2, 1, 28, 28))
    shapes = {name: tuple(a.shape) for name, a in acts.items()}
    # 28 -conv3-> 26 -pool-> 13 -conv3-> 11 (the seed's 11x11) -pool-> 5; 50*5*5 = 1250
    assert shapes == {"conv1": (2, 25, 26, 26), "pool1": (2, 25, 13, 13), "conv2": (2, 50, 11, 11),
                      "pool2": (2, 50, 5, 5), "fc1": (2, 100), "logits": (2, 10)}
    assert model.parameter_counts() == {"conv1": 25 * 9 + 25, "conv2": 50 * 25 * 9 + 50,
                                        "fc1": 1250 * 100 + 100, "fc2": 100 * 10 + 10,
                                        "total": 250 + 11300 + 125100 + 1010}


def test_digits_cnn_runs_on_convx_kernels():
    model = DigitsCNN()
    assert isinstance(model.conv1, convx.nn.Conv2d) and isinstance(model.pool2, convx.nn.MaxPool2d)
    with convx.record_algos() as log:
        model(torch.rand(1, 1, 28, 28)).sum().backward()
    assert sum(entry.startswith("conv2d_forward") for entry in log) == 2
    assert any(entry.startswith("conv2d_backward") for entry in log)


def test_digits_cnn_refuses_sizes_that_leave_nothing():
    with pytest.raises(ValueError, match="image_size"):
        DigitsCNN(image_size=8)
    DigitsCNN(image_size=8, padding=1)       # 8 -> 8 -> 4 -> 4 -> 2


@pytest.fixture(scope="module")
def digits():
    return load_sklearn_digits(test_fraction=0.3, seed=1)


def test_training_lowers_the_loss_and_beats_chance(digits):
    torch.manual_seed(0)
    model = DigitsCNN(image_size=8, padding=1)
    before = accuracy(model, digits.x_test, digits.y_test)
    history = train(model, digits.x_train[:600], digits.y_train[:600], digits.x_test, digits.y_test, epochs=4,
                    lr=5e-3, batch_size=32, max_shift=0, progress=False)
    assert len(history.loss) == 4 and history.loss[-1] < 0.5 * history.loss[0]
    after = accuracy(model, digits.x_test, digits.y_test)
    assert after > 0.6 > before + 0.2          # chance is 0.1
    assert history.test_accuracy[-1] == pytest.approx(after)


def test_save_and_load_give_the_same_predictions(tmp_path, digits):
    torch.manual_seed(0)
    model = DigitsCNN(image_size=8, padding=1, channels=(4, 6), hidden=12)
    path = tmp_path / "digits.pt"
    save(model, str(path))
    again = load(str(path))
    assert again.config == model.config
    x = torch.from_numpy(digits.x_test[:5])
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="DigitsCNN"):
        load(str(tmp_path / "other.pt"))


def test_train_checks_its_arguments(digits):
    model = DigitsCNN(image_size=8, padding=1)
    with pytest.raises(ValueError, match="epochs"):
        train(model, digits.x_train, digits.y_train, epochs=0, progress=False)
    with pytest.raises(ValueError, match="x_train"):
        train(model, digits.x_train, digits.y_train[:-1], progress=False)


def test_go_policy_net_is_alphagos_architecture():
    net = GoPolicyNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(isinstance(m, convx.nn.Conv2d) for m in convs)
    assert [c.kernel_size for c in convs] == [(5, 5)] + [(3, 3)] * 11 + [(1, 1)]
    assert [c.padding for c in convs] == [(2, 2)] + [(1, 1)] * 11 + [(0, 0)]
    assert [c.out_channels for c in convs] == [192] * 12 + [1]
    assert convs[0].in_channels == 48
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())   # no pooling on a board
    assert net.position_bias.shape == (361,)                                     # a bias per point


def test_go_policy_net_gives_a_distribution_over_the_board():
    torch.manual_seed(0)
    net = GoPolicyNet(width=16, blocks=3)
    boards = (torch.rand(3, 48, 19, 19) > 0.8).float()
    with torch.no_grad():
        net.position_bias.normal_()
        probs = net(boards)
    assert probs.shape == (3, 361)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    # different positions give different move distributions
    assert (probs[0] - probs[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.rand(1, 48, 9, 9))
    with pytest.raises(ValueError, match="width"):
        GoPolicyNet(width=0)
