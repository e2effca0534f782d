"""8-3's functional API: `keras.Model(model.inputs, model.layers[i].output)` is `feature_extractor(model, i)`."""

import pytest
import torch
import torch.nn.functional as F

from hgmldl.models import cnn, feature_extractor, keras_init_, keras_layers, mlp
from hgmldl.module import Classifier

# The output shapes of the book's 8-2 model.summary(), NHWC there, NCHW here.
BOOK_SHAPES = {
    "conv2d": (32, 28, 28),
    "max_pooling2d": (32, 14, 14),
    "conv2d_1": (64, 14, 14),
    "max_pooling2d_1": (64, 7, 7),
    "flatten": (3136,),
    "dense": (100,),
    "dropout": (100,),
    "dense_1": (10,),
}


@pytest.fixture
def net():
    torch.manual_seed(0)
    return keras_init_(cnn()).eval()


@pytest.fixture
def images():
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_keras_layer_names_and_indices_give_the_book_summarys_shapes(net, images):
    assert list(keras_layers(net)) == list(BOOK_SHAPES)
    for index, (name, shape) in enumerate(BOOK_SHAPES.items()):
        assert feature_extractor(net, name)(images).shape == (3, *shape)
        assert feature_extractor(net, index)(images).shape == (3, *shape)


def test_the_extractor_computes_what_the_layers_compute_by_hand(net, images):
    conv1, conv2 = net[0], net[3]
    by_hand_1 = F.relu(F.conv2d(images, conv1.weight, conv1.bias, padding=1))
    by_hand_2 = F.relu(F.conv2d(F.max_pool2d(by_hand_1, 2), conv2.weight, conv2.bias, padding=1))
    # The book's model.layers[0] and model.layers[2]: Conv2D outputs after their fused ReLU.
    torch.testing.assert_close(feature_extractor(net, 0)(images), by_hand_1)
    torch.testing.assert_close(feature_extractor(net, 2)(images), by_hand_2)
    assert (feature_extractor(net, 0)(images) >= 0).all()


def test_the_extractor_of_a_classifier_shares_its_trained_weights(images):
    module = Classifier(model={"_target_": "hgmldl.models.cnn"}, optimizer={}).eval()
    extractor = feature_extractor(module, "conv2d")
    with torch.no_grad():
        module.net[0].bias.add_(1.0)  # a change to the model shows in the extractor, as in Keras' shared layers
    torch.testing.assert_close(extractor(images), module.net[:2](images))
    torch.testing.assert_close(extractor[0].bias, module.net[0].bias)


def test_mlp_layers_fuse_each_activation_into_its_dense():
    assert keras_layers(mlp(hidden_units=[100, 100], activation=["sigmoid", "relu"], dropout=0.3)) == {
        "flatten": slice(0, 1),
        "dense": slice(1, 3),
        "dense_1": slice(3, 5),
        "dropout": slice(5, 6),
        "dense_2": slice(6, 7),
    }


@pytest.mark.parametrize("layer", [8, -9, "conv1", "dense_2"])
def test_a_layer_the_model_lacks_lists_the_ones_it_has(net, layer):
    with pytest.raises(ValueError, match=r"0-7 or conv2d, max_pooling2d, conv2d_1, .*, dense_1$"):
        feature_extractor(net, layer)
